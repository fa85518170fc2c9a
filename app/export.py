"""Export games in the format of the public ReSpect release (docs/operators.md).

Three files per export, JSONL or Parquet, in one folder:

``interaction`` — one row per game:
    game_id, turn (turns in which the speaker spoke), end (1 = successful, 0 = not, as in the
    release), outcome, end_reason, targets (sorted), context (the listener's image order, as in
    the release), speaker_order, listener_order, clicks (the selection after each submitted
    turn, cumulative), chat (the utterances), policy_name (the system; ``human`` for human
    listeners), round, date (UTC, ``YYYY-MM-DD HH:MM:SS``), checkpoint, listener_kind, source
    (live | imported), split, config_index, duration_s, sec_until_send and sec_until_submit (per
    turn), incomplete.
``turn`` — one row per played turn (an utterance and a submitted selection):
    game_turn_id (``<game_id>_<turn>``; turns count from 1 as everywhere in MultiRef Live),
    game_id, turn, chats (utterances up to and including this turn's), context, targets,
    currently_selected (before the action), selected, deselected, clicks (the selection after
    the action), chat_feedback (the next utterance, or null on the last turn), action and
    prob_action (the model listener's action text and its probability under the deployed
    policy; null for human listeners), end, outcome, policy_name, round, date, checkpoint,
    listener_kind, sec_until_send, sec_until_submit, auto_sent, auto_submitted, incomplete.
``events`` — the raw event log: game_id, seq, type, at, actor, data (the event as JSON text).

Tangram ids in the interaction and turn rows are written as the release writes them, file names
(``page7-40.png``), for every game, live or imported; the database and the ``events`` rows hold
the canonical id without extension (``app.tangrams.store``).

Rows are rebuilt from each game's event log (the truth), not from the derived tables. An export
reads one consistent snapshot (a REPEATABLE READ, read-only transaction on PostgreSQL; one read
transaction on SQLite's WAL), so it can run while games are being played; games still running
are left out unless ``include_incomplete`` (their rows then say ``incomplete: true``). Games are
read a page at a time (keyset pagination) and written row by row (JSONL) or in row groups
(Parquet, ``pyarrow.parquet.ParquetWriter``): memory does not grow with the number of games.
Files are written under a temporary name and renamed once complete.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import Text, and_, cast, func, or_, select, text

from app.db.database import Database
from app.db.models import Game, GameEvent, ListenerRequest
from app.game.rules import GameState, Outcome, event_from_dict, replay
from app.tangrams.store import release_id
from app.scrub import PATTERNS, Scrubber

FORMATS = ("jsonl", "parquet")
KINDS = ("interaction", "turn", "events")
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
SCHEMA_VERSION = 1


@dataclass
class ExportFilter:
    rounds: list[int] | None = None
    systems: list[str] | None = None
    since: float | None = None  # created at or after (epoch seconds)
    until: float | None = None  # created before
    sources: list[str] | None = None  # live | imported (default: both)
    include_incomplete: bool = False

    def clauses(self) -> list:
        out = []
        if not self.include_incomplete:
            out.append(Game.status == "ended")
        if self.rounds:
            out.append(Game.round.in_(self.rounds))
        if self.systems:
            out.append(Game.system.in_(self.systems))
        if self.since is not None:
            out.append(Game.created_at >= self.since)
        if self.until is not None:
            out.append(Game.created_at < self.until)
        if self.sources:
            out.append(Game.source.in_(self.sources))
        return out

    def json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class ExportReport:
    format: str
    out: Path
    games: int = 0
    rows: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})
    files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    scrubbed: dict[str, int] | None = None  # release exports: placeholders written, per kind

    def sizes(self) -> dict[str, int]:
        return {k: p.stat().st_size for k, p in self.files.items() if p.exists()}


def format_date(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime(DATE_FORMAT)


def parse_date(value) -> float:
    """Epoch seconds from a release ``date`` (``2024-09-12 21:35:12``, ISO 8601, or a number);
    naive times are UTC."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime):
        dt = value
    else:
        text_ = str(value).strip()
        try:
            return float(text_)
        except ValueError:
            pass
        dt = datetime.fromisoformat(text_.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


# ---------------------------------------------------------------- rows


@dataclass
class GameBundle:
    """What one game's rows are made of: its row, its event log, its model turns."""

    game: dict
    events: list[dict]  # {seq, type, at, actor, raw}: raw is the event's JSON text
    requests: dict[int, dict]  # turn -> {action, prob_action, checkpoint}

    def state(self) -> GameState:
        return replay([event_from_dict(json.loads(e["raw"])) for e in self.events])


def _end(state: GameState) -> int:
    return 1 if state.outcome is Outcome.SUCCESSFUL else 0


def _ids(tangrams) -> list[str]:
    """Tangram ids as the release writes them (``page7-40.png``), for live and imported games."""
    return [release_id(t) for t in tangrams]


def interaction_row(b: GameBundle, state: GameState) -> dict:
    g = b.game
    spoken = [t for t in state.turns if t.utterance is not None]
    submitted = [t for t in spoken if t.selection_after is not None]
    return {
        "game_id": g["id"],
        "turn": len(spoken),
        "end": _end(state),
        "outcome": state.outcome.value if state.outcome else None,
        "end_reason": state.end_reason.value if state.end_reason else None,
        "targets": _ids(sorted(state.config.targets)),
        "context": _ids(state.config.listener_order),
        "speaker_order": _ids(state.config.speaker_order),
        "listener_order": _ids(state.config.listener_order),
        "clicks": [_ids(t.selection_after) for t in submitted],
        "chat": [t.utterance for t in spoken],
        "policy_name": g["system"] or ("human" if g["listener_kind"] == "human" else "model"),
        "round": g["round"],
        "date": format_date(state.created_at),
        "checkpoint": g["checkpoint"],
        "listener_kind": state.listener_kind.value,
        "source": g["source"],
        "split": g["split"],
        "config_index": g["config_index"],
        "duration_s": round(state.ended_at - state.created_at, 3) if state.ended_at else None,
        "sec_until_send": [round(t.sent_at - t.started_at, 3) for t in spoken],
        "sec_until_submit": [round(t.submitted_at - t.started_at, 3) for t in submitted],
        "incomplete": not state.ended,
    }


def turn_rows(b: GameBundle, state: GameState) -> list[dict]:
    g = b.game
    spoken = [t for t in state.turns if t.utterance is not None]
    chats = [t.utterance for t in spoken]
    common = {
        "context": _ids(state.config.listener_order),
        "targets": _ids(sorted(state.config.targets)),
        "end": _end(state),
        "outcome": state.outcome.value if state.outcome else None,
        "policy_name": g["system"] or ("human" if g["listener_kind"] == "human" else "model"),
        "round": g["round"],
        "date": format_date(state.created_at),
        "listener_kind": state.listener_kind.value,
        "incomplete": not state.ended,
    }
    rows = []
    for i, t in enumerate(spoken):
        if t.selection_after is None:
            continue  # the speaker spoke but the game ended before the listener acted
        request = b.requests.get(t.turn, {})
        rows.append(
            {
                "game_turn_id": f"{g['id']}_{t.turn}",
                "game_id": g["id"],
                "turn": t.turn,
                "chats": chats[: i + 1],
                "context": common["context"],
                "targets": common["targets"],
                "currently_selected": _ids(t.selection_before),
                "selected": _ids(t.selected),
                "deselected": _ids(t.deselected),
                "clicks": _ids(t.selection_after),
                "chat_feedback": chats[i + 1] if i + 1 < len(chats) else None,
                "action": request.get("action"),
                "prob_action": request.get("prob_action"),
                "end": common["end"],
                "outcome": common["outcome"],
                "policy_name": common["policy_name"],
                "round": common["round"],
                "date": common["date"],
                "checkpoint": request.get("checkpoint") or g["checkpoint"],
                "listener_kind": common["listener_kind"],
                "sec_until_send": round(t.sent_at - t.started_at, 3),
                "sec_until_submit": round(t.submitted_at - t.started_at, 3),
                "auto_sent": t.auto_sent,
                "auto_submitted": t.auto_submitted,
                "incomplete": common["incomplete"],
            }
        )
    return rows


def event_rows(b: GameBundle) -> list[dict]:
    return [
        {
            "game_id": b.game["id"],
            "seq": e["seq"],
            "type": e["type"],
            "at": e["at"],
            "actor": e["actor"],
            "data": e["raw"],
        }
        for e in b.events
    ]


def scrub_rows(scrubber: Scrubber, inter: dict, turns: list[dict], events: list[dict]) -> None:
    """For a release: personal data in the players' text becomes placeholders, in place.
    Counted once per message (in the event log); the other files repeat the same messages."""
    counted = scrubber.counts.copy()
    inter["chat"] = scrubber.texts(inter["chat"])
    for row in turns:
        row["chats"] = scrubber.texts(row["chats"])
        row["chat_feedback"] = scrubber.text(row["chat_feedback"])
    scrubber.counts = counted
    for row in events:
        row["data"] = scrubber.event_json(row["data"])


# ---------------------------------------------------------------- schemas (Parquet)


def schemas():
    import pyarrow as pa

    s, i64, f64, b = pa.string(), pa.int64(), pa.float64(), pa.bool_()
    ls, lls, lf = pa.list_(s), pa.list_(pa.list_(s)), pa.list_(f64)
    return {
        "interaction": pa.schema(
            [
                ("game_id", s), ("turn", i64), ("end", pa.int8()), ("outcome", s), ("end_reason", s),
                ("targets", ls), ("context", ls), ("speaker_order", ls), ("listener_order", ls),
                ("clicks", lls), ("chat", ls), ("policy_name", s), ("round", i64), ("date", s),
                ("checkpoint", s), ("listener_kind", s), ("source", s), ("split", s),
                ("config_index", i64), ("duration_s", f64), ("sec_until_send", lf),
                ("sec_until_submit", lf), ("incomplete", b),
            ]
        ),
        "turn": pa.schema(
            [
                ("game_turn_id", s), ("game_id", s), ("turn", i64), ("chats", ls), ("context", ls),
                ("targets", ls), ("currently_selected", ls), ("selected", ls), ("deselected", ls),
                ("clicks", ls), ("chat_feedback", s), ("action", s), ("prob_action", f64),
                ("end", pa.int8()), ("outcome", s), ("policy_name", s), ("round", i64), ("date", s),
                ("checkpoint", s), ("listener_kind", s), ("sec_until_send", f64),
                ("sec_until_submit", f64), ("auto_sent", b), ("auto_submitted", b), ("incomplete", b),
            ]
        ),
        "events": pa.schema(
            [("game_id", s), ("seq", i64), ("type", s), ("at", f64), ("actor", s), ("data", s)]
        ),
    }


# ---------------------------------------------------------------- writers


class JsonlWriter:
    def __init__(self, path: Path, kind: str) -> None:
        self.path = path
        self._f = open(path, "w", encoding="utf-8")

    def write(self, rows: list[dict]) -> None:
        for row in rows:
            self._f.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
            self._f.write("\n")

    def close(self) -> None:
        self._f.close()


class ParquetRowWriter:
    """Rows buffered up to one row group, then written (constant memory)."""

    def __init__(self, path: Path, kind: str, row_group_rows: int = 4096) -> None:
        import pyarrow.parquet as pq

        self.path = path
        self.schema = schemas()[kind]
        self.rows: list[dict] = []
        self.row_group_rows = row_group_rows
        self._w = pq.ParquetWriter(path, self.schema, compression="zstd")

    def write(self, rows: list[dict]) -> None:
        self.rows.extend(rows)
        if len(self.rows) >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.rows:
            self._w.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        self._flush()
        self._w.close()


# ---------------------------------------------------------------- reading (one snapshot)


async def _begin_snapshot(conn) -> None:
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
    else:  # SQLite: an explicit read transaction pins one WAL snapshot for every query below
        await conn.exec_driver_sql("BEGIN")


async def iter_games(
    db: Database,
    flt: ExportFilter,
    page_size: int = 250,
    on_total: Callable[[int], None] | None = None,
) -> AsyncIterator[GameBundle]:
    """Every game that ``flt`` selects, oldest first, read from one consistent snapshot."""
    game_cols = [
        Game.id, Game.created_at, Game.status, Game.system, Game.round, Game.checkpoint,
        Game.listener_kind, Game.source, Game.split, Game.config_index,
    ]
    async with db.engine.connect() as conn:
        await conn.begin()
        try:
            await _begin_snapshot(conn)
            clauses = flt.clauses()
            total = (await conn.execute(select(func.count()).select_from(Game).where(*clauses))).scalar_one()
            if on_total:
                on_total(total)
            last: tuple[float, str] | None = None
            while True:
                q = select(*game_cols).where(*clauses)
                if last is not None:
                    q = q.where(
                        or_(Game.created_at > last[0], and_(Game.created_at == last[0], Game.id > last[1]))
                    )
                q = q.order_by(Game.created_at, Game.id).limit(page_size)
                page = [dict(r._mapping) for r in (await conn.execute(q))]
                if not page:
                    break
                last = (page[-1]["created_at"], page[-1]["id"])
                ids = [g["id"] for g in page]
                events: dict[str, list[dict]] = defaultdict(list)
                # The event JSON is read as text: parsed once for the replay, written as it is.
                result = await conn.stream(
                    select(GameEvent.game_id, GameEvent.seq, GameEvent.type, GameEvent.at,
                           GameEvent.actor, cast(GameEvent.data, Text))
                    .where(GameEvent.game_id.in_(ids))
                    .order_by(GameEvent.game_id, GameEvent.seq)
                )
                async for part in result.partitions(2000):
                    for gid, seq, type_, at, actor, raw in part:
                        events[gid].append(
                            {"seq": seq, "type": type_, "at": at, "actor": actor, "raw": raw}
                        )
                requests: dict[str, dict[int, dict]] = defaultdict(dict)
                rows = await conn.execute(
                    select(ListenerRequest.game_id, ListenerRequest.turn, ListenerRequest.action,
                           ListenerRequest.prob_action, ListenerRequest.checkpoint)
                    .where(
                        ListenerRequest.game_id.in_(ids),
                        ListenerRequest.status.in_(("applied", "done")),
                    )
                )
                for gid, turn, action, prob, ck in rows:
                    requests[gid][turn] = {"action": action, "prob_action": prob, "checkpoint": ck}
                for g in page:
                    if events.get(g["id"]):
                        yield GameBundle(g, events.pop(g["id"]), requests.get(g["id"], {}))
        finally:
            await conn.rollback()


# ---------------------------------------------------------------- export


def _parse_since(value) -> float | None:
    return None if value in (None, "") else parse_date(value)


async def export(
    db: Database,
    out: Path,
    fmt: str = "jsonl",
    flt: ExportFilter | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    page_size: int = 250,
    release: bool = False,
) -> ExportReport:
    """Write ``interaction``, ``turn`` and ``events`` files for the selected games into ``out``.

    ``release``: scrub personal data from the players' text (:mod:`app.scrub`); the counts
    are in the report and the manifest, and the database keeps the original text.

    ``progress(done, total)`` is called as games are written (total first, then done)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}")
    flt = flt or ExportFilter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report = ExportReport(format=fmt, out=out)
    final = {k: out / f"{k}.{fmt}" for k in KINDS}
    partial = {k: out / f".{k}.{fmt}.partial" for k in KINDS}
    writer_cls = JsonlWriter if fmt == "jsonl" else ParquetRowWriter
    writers = {k: writer_cls(partial[k], k) for k in KINDS}
    total: list[int] = []
    scrubber = Scrubber() if release else None
    try:
        def on_total(n: int) -> None:
            total.append(n)
            if progress:
                progress(0, n)

        async for bundle in iter_games(db, flt, page_size=page_size, on_total=on_total):
            state = bundle.state()
            inter = interaction_row(bundle, state)
            turns = turn_rows(bundle, state)
            events = event_rows(bundle)
            if scrubber is not None:
                scrub_rows(scrubber, inter, turns, events)
            writers["interaction"].write([inter])
            writers["turn"].write(turns)
            writers["events"].write(events)
            report.games += 1
            report.rows["interaction"] += 1
            report.rows["turn"] += len(turns)
            report.rows["events"] += len(events)
            if progress and report.games % 50 == 0:
                progress(report.games, total[0] if total else None)
        for w in writers.values():
            w.close()
        for k in KINDS:
            os.replace(partial[k], final[k])
            report.files[k] = final[k]
    except BaseException:
        for k, w in writers.items():
            try:
                w.close()
            except Exception:
                pass
            partial[k].unlink(missing_ok=True)
        raise
    report.seconds = time.perf_counter() - started
    if scrubber is not None:
        report.scrubbed = {kind: scrubber.counts.get(kind, 0) for kind, _ in PATTERNS}
    if progress:
        progress(report.games, total[0] if total else report.games)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "format": fmt,
        "exported_at": format_date(time.time()),
        "filter": flt.json(),
        "games": report.games,
        "rows": report.rows,
        "files": {k: p.name for k, p in report.files.items()},
        "database": db.describe(),
        "release": release,
        "scrubbed": report.scrubbed,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return report
