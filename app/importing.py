"""Import published games (interaction-level records) as historical games.

Two record shapes are recognised, per record:

- the **release** shape that ``multiref export`` writes and the public ReSpect release uses:
  ``game_id, chat, clicks, targets, context`` (the listener's order), optional
  ``speaker_order, listener_order, policy_name, round, date, outcome, end_reason,
  sec_until_send, sec_until_submit, split, checkpoint``;
- the shape of the **recorded games sample** (``respect_games/*.jsonl``):
  ``game_id, speaker_order, listener_order, targets, utterances, selection_after_turn,
  outcome, policy, created_at, turn_timings``.

Each record becomes a game with ``source = "imported"``, its policy name as ``system`` and its
round, whose event log is *synthesised through the rules engine*: the players join, each turn's
utterance is sent, the listener's clicks (deselections first) take the selection to the recorded
one, and the selection is submitted, at the recorded times when there are any. The engine, not
the record, decides how the game ends, and the record is refused when the two disagree; so the
derived tables follow from the log and ``multiref db check`` passes. Where the engine needs a
rule the record implies, the game's stored rules say so: a game recorded as unsuccessful after
fewer turns than the default maximum is stored with ``max_turns`` equal to its length; longer
utterances raise ``max_utterance_chars``. Utterances are kept verbatim (``SendUtterance(verbatim=
True)``): whitespace, Unicode and markup-looking text come back byte for byte on export; only live
input is normalised.

Every record is imported in its own transaction: a bad record is reported with its file and line
(row, for Parquet) and skipped, never half-written. A game id already in the database is skipped
(importing a file twice is harmless).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from app import audit
from app.db.database import Database
from app.db.gamelog import append, create_game
from app.db.models import Game
from app.export import parse_date
from app.tangrams.store import canonical_id
from app.game.rules import (
    AdminEnd,
    Click,
    EndReason,
    GameConfig,
    GameCreated,
    GameRules,
    Join,
    ListenerKind,
    Rejection,
    Seat,
    SendUtterance,
    Submit,
    new_game,
    step,
)

GAME_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
DEFAULT_SEND_SECONDS = 10.0
DEFAULT_SELECT_SECONDS = 8.0
SAMPLE_POLICY_FIELD = "policy"


class BadRecord(ValueError):
    pass


@dataclass
class Issue:
    file: str
    line: int
    game_id: str | None
    message: str

    def __str__(self) -> str:
        gid = f" (game {self.game_id})" if self.game_id else ""
        return f"{self.file}:{self.line}{gid}: {self.message}"


@dataclass
class ImportReport:
    imported: int = 0
    existing: int = 0
    bad: list[Issue] = field(default_factory=list)
    game_ids: list[str] = field(default_factory=list)

    @property
    def read(self) -> int:
        return self.imported + self.existing + len(self.bad)


@dataclass
class GameRecord:
    """One interaction, whatever shape it came in."""

    game_id: str
    speaker_order: list[str]
    listener_order: list[str]
    targets: list[str]
    utterances: list[str]
    selections: list[list[str]]  # the selection after each submitted turn
    policy_name: str
    round: int | None
    created_at: float
    outcome: str | None = None
    end_reason: str | None = None
    send_seconds: list[float] | None = None
    submit_seconds: list[float] | None = None
    duration_s: float | None = None
    split: str | None = None
    checkpoint: str | None = None
    listener_kind: str | None = None


# ---------------------------------------------------------------- reading files


def read_records(path: Path) -> Iterator[tuple[int, dict | Exception]]:
    """(line, record) for every record of a JSONL or Parquet file; unreadable lines give the
    exception in place of the record."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        line = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=512):
            for row in batch.to_pylist():
                line += 1
                yield line, row
        return
    with open(path, encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except ValueError as exc:
                yield line, BadRecord(f"not JSON: {exc}")
                continue
            if not isinstance(record, dict):
                yield line, BadRecord("a record must be a JSON object")
                continue
            yield line, record


# ---------------------------------------------------------------- shapes


def _strings(value, name: str) -> list[str]:
    if value is None:
        raise BadRecord(f"{name} is missing")
    if not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
        raise BadRecord(f"{name} must be a list of strings")
    return list(value)


def _numbers(value, name: str, n: int) -> list[float] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in value
    ):
        raise BadRecord(f"{name} must be a list of numbers")
    out = [float(x) for x in value]
    return out if len(out) >= n else None


def _optional_int(value, name: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadRecord(f"{name} must be an integer")
    try:
        number = int(value)
    except ValueError as exc:
        raise BadRecord(f"{name} must be an integer") from exc
    if isinstance(value, float) and number != value:
        raise BadRecord(f"{name} must be an integer")
    return number


def _date(value) -> float:
    if value is None:
        raise BadRecord("date is missing")
    try:
        return parse_date(value)
    except (TypeError, ValueError) as exc:
        raise BadRecord(f"unreadable date {value!r}") from exc


def parse_record(record: dict, *, policy: str | None = None, round_: int | None = None) -> GameRecord:
    """Recognise a record's shape and check its fields. ``policy``/``round_`` fill in (never
    override) a missing policy name or round."""
    if "game_turn_id" in record:
        raise BadRecord("this is a turn-level row; import the interaction file")
    gid = record.get("game_id")
    if not isinstance(gid, str) or not GAME_ID_RE.match(gid):
        raise BadRecord("game_id must be 1-32 letters, digits, '-' or '_'")
    if "utterances" in record and "selection_after_turn" in record:  # the recorded-games sample
        utterances = _strings(record["utterances"], "utterances")
        selections_raw = record["selection_after_turn"]
        timings = record.get("turn_timings") or []
        send = [t.get("secUntilSend") for t in timings if isinstance(t, dict)]
        submit = [t.get("secUntilSubmit") for t in timings if isinstance(t, dict)]
        if any(x is None for x in send) or len(send) != len(timings):
            send = None
        if any(x is None for x in submit) or len(submit) != len(timings):
            submit = None
        name = record.get(SAMPLE_POLICY_FIELD) or record.get("policy_name") or policy
        speaker_order = _strings(record.get("speaker_order"), "speaker_order")
        listener_order = _strings(record.get("listener_order"), "listener_order")
        created = record.get("created_at", record.get("date"))
        rnd = record.get("round", round_)
        outcome = record.get("outcome")
        end_reason = record.get("end_reason")
        duration = None
        extra = {}
    elif "chat" in record and "clicks" in record:  # the release shape (and our export)
        if record.get("incomplete"):
            raise BadRecord("the game was still running when it was exported; not imported")
        utterances = _strings(record["chat"], "chat")
        selections_raw = record["clicks"]
        send, submit = record.get("sec_until_send"), record.get("sec_until_submit")
        name = record.get("policy_name") or policy
        context = record.get("context")
        listener_order = _strings(record.get("listener_order") or context, "listener_order/context")
        speaker_order = _strings(record.get("speaker_order") or listener_order, "speaker_order")
        created = record.get("date", record.get("created_at"))
        rnd = record.get("round", round_)
        if rnd is None:
            rnd = round_
        outcome = record.get("outcome")
        if outcome is None and record.get("end") in (0, 1):
            outcome = "successful" if record["end"] == 1 else "unsuccessful"
        end_reason = record.get("end_reason")
        duration = record.get("duration_s")
        extra = {"split": record.get("split"), "checkpoint": record.get("checkpoint"),
                 "listener_kind": record.get("listener_kind")}
    else:
        raise BadRecord(
            "unknown record shape: expected chat/clicks (release) or "
            "utterances/selection_after_turn (recorded games)"
        )
    if not isinstance(selections_raw, (list, tuple)):
        raise BadRecord("the selections must be a list of lists")
    selections = [_strings(s, f"selection of turn {i + 1}") for i, s in enumerate(selections_raw)]
    if not name or not isinstance(name, str):
        raise BadRecord("no policy name (pass --policy to give one)")
    if len(name) > 64:
        raise BadRecord(f"policy name longer than 64 characters: {name[:70]!r}")
    if len(selections) > len(utterances) or len(selections) < len(utterances) - 1:
        raise BadRecord(
            f"{len(utterances)} utterances but {len(selections)} selections "
            "(a selection follows every utterance, except perhaps the last)"
        )
    if outcome is not None and outcome not in ("successful", "unsuccessful", "aborted"):
        raise BadRecord(f"unknown outcome {outcome!r}")
    if end_reason is not None:
        try:
            EndReason(end_reason)
        except ValueError as exc:
            raise BadRecord(f"unknown end_reason {end_reason!r}") from exc
    for key in ("split", "checkpoint", "listener_kind"):
        if extra.get(key) is not None and not isinstance(extra[key], str):
            raise BadRecord(f"{key} must be a string")
    if extra.get("listener_kind") not in (None, "human", "model"):
        raise BadRecord("listener_kind must be human or model")
    # One tangram id in the database, whatever the source: the release writes "page7-40.png".
    return GameRecord(
        game_id=gid,
        speaker_order=[canonical_id(t) for t in speaker_order],
        listener_order=[canonical_id(t) for t in listener_order],
        targets=[canonical_id(t) for t in _strings(record.get("targets"), "targets")],
        utterances=utterances,
        selections=[[canonical_id(t) for t in s] for s in selections],
        policy_name=name,
        round=_optional_int(rnd, "round"),
        created_at=_date(created),
        outcome=outcome,
        end_reason=end_reason,
        send_seconds=_numbers(send, "sec_until_send", len(utterances)),
        submit_seconds=_numbers(submit, "sec_until_submit", len(selections)),
        duration_s=float(duration) if isinstance(duration, (int, float)) and not isinstance(duration, bool) else None,
        split=extra.get("split"),
        checkpoint=extra.get("checkpoint"),
        listener_kind=extra.get("listener_kind"),
    )


# ---------------------------------------------------------------- synthesis


def _apply(state, cmd, events: list, what: str):
    state, result = step(state, cmd)
    if isinstance(result, Rejection):
        raise BadRecord(f"{what}: {result.message}")
    events.extend(result)
    return state


def synthesise(rec: GameRecord, base: GameRules | None = None):
    """The record's game as the rules engine plays it: (GameCreated, later events, final state)."""
    base = base or GameRules()
    try:
        config = GameConfig(
            context=tuple(sorted(rec.speaker_order)),
            targets=tuple(sorted(rec.targets)),
            speaker_order=tuple(rec.speaker_order),
            listener_order=tuple(rec.listener_order),
        )
        config.check()
    except ValueError as exc:
        raise BadRecord(f"bad game configuration: {exc}") from exc
    n = len(rec.utterances)
    texts = list(rec.utterances)  # verbatim: an import must not change the data
    complete_last = len(rec.selections) == n
    max_turns = max(base.max_turns, n)
    if rec.outcome == "unsuccessful" and complete_last:
        max_turns = n  # ended after its last turn without success
    k = len(config.context)
    rules = base.model_copy(
        update={
            "max_turns": max_turns,
            "num_images": k,
            "min_targets": min(base.min_targets, len(config.targets)),
            "max_targets": min(k, max(base.max_targets, len(config.targets))),
            "max_utterance_chars": max([base.max_utterance_chars, *(len(t) for t in texts)]),
        }
    )
    human = rec.policy_name == "human" if rec.listener_kind is None else rec.listener_kind == "human"
    kind = ListenerKind.HUMAN if human else ListenerKind.MODEL
    t0 = rec.created_at
    created = GameCreated(game_id=rec.game_id, config=config, rules=rules, listener_kind=kind, at=t0)
    state = new_game(created)
    events: list = []
    state = _apply(state, Join(seat=Seat.SPEAKER, at=t0), events, "speaker joins")
    if human:
        state = _apply(state, Join(seat=Seat.LISTENER, at=t0), events, "listener joins")
    now = t0
    for i, text_ in enumerate(texts):
        turn = i + 1
        if state.ended:
            raise BadRecord(
                f"the game ends after turn {state.turn} ({state.end_reason.value}) but the record "
                f"has {n} turns"
            )
        start = state.current_turn.started_at
        send = rec.send_seconds[i] if rec.send_seconds else DEFAULT_SEND_SECONDS
        sent_at = start + max(0.0, send)
        state = _apply(state, SendUtterance(seat=Seat.SPEAKER, text=text_, at=sent_at, verbatim=True), events, f"turn {turn}")
        now = sent_at
        if i >= len(rec.selections):
            break
        wanted = set(rec.selections[i])
        unknown = wanted - set(config.context)
        if unknown:
            raise BadRecord(f"turn {turn}: selection has images not in the game: {sorted(unknown)}")
        before = set(state.selection)
        toggles = sorted(before - wanted) + sorted(wanted - before)  # deselections first
        if rec.submit_seconds:
            submit_at = max(sent_at, start + rec.submit_seconds[i])
        else:
            submit_at = sent_at + DEFAULT_SELECT_SECONDS
        gap = (submit_at - sent_at) / (len(toggles) + 1)
        for j, tid in enumerate(toggles, start=1):
            state = _apply(state, Click(seat=Seat.LISTENER, tangram_id=tid, at=sent_at + j * gap), events, f"turn {turn}")
        state = _apply(state, Submit(seat=Seat.LISTENER, at=submit_at), events, f"turn {turn}")
        now = submit_at
    if not state.ended:
        if rec.outcome == "successful":
            raise BadRecord("recorded as successful, but the last selection is not the targets")
        if rec.outcome == "unsuccessful":
            raise BadRecord("recorded as unsuccessful, but the game did not reach its last turn")
        reason = EndReason(rec.end_reason) if rec.end_reason else EndReason.ADMIN_ENDED
        if reason in (EndReason.SUCCESS, EndReason.MAX_TURNS):
            raise BadRecord(f"end_reason {reason.value} does not match the recorded turns")
        end_at = max(now, t0 + rec.duration_s) if rec.duration_s else now
        state = _apply(state, AdminEnd(at=end_at, reason=reason, note="imported"), events, "end")
    if rec.outcome is not None and state.outcome.value != rec.outcome:
        raise BadRecord(f"recorded outcome {rec.outcome}, but the turns give {state.outcome.value}")
    if rec.end_reason is not None and state.end_reason.value != rec.end_reason:
        raise BadRecord(f"recorded end_reason {rec.end_reason}, but the turns give {state.end_reason.value}")
    return created, events, state


# ---------------------------------------------------------------- import


class _Exists(Exception):
    pass


async def import_record(db: Database, rec: GameRecord, rules: GameRules | None = None) -> None:
    """Write one game in one transaction (nothing is written if anything fails)."""
    created, events, final = synthesise(rec, rules)
    async with db.session() as s:
        async with s.begin():
            if await s.get(Game, rec.game_id) is not None:
                raise _Exists(rec.game_id)
            first = await create_game(
                s,
                created,
                system=rec.policy_name,
                round=rec.round,
                checkpoint=rec.checkpoint,
                split=rec.split,
                config_index=None,
                source="imported",
            )
            await append(s, first, events, final, actor="import")


async def import_files(
    db: Database,
    paths: list[Path],
    *,
    policy: str | None = None,
    round_: int | None = None,
    rules: GameRules | None = None,
    actor: str = "unknown",
    on_record=None,
) -> ImportReport:
    """Import every record of ``paths``; see the module docstring."""
    report = ImportReport()
    for path in paths:
        path = Path(path)
        try:
            records = read_records(path)
            for line, record in records:
                gid = record.get("game_id") if isinstance(record, dict) else None
                gid = gid if isinstance(gid, str) else None
                try:
                    if isinstance(record, Exception):
                        raise record
                    rec = parse_record(record, policy=policy, round_=round_)
                    await import_record(db, rec, rules)
                except _Exists:
                    report.existing += 1
                except BadRecord as exc:
                    report.bad.append(Issue(str(path), line, gid, str(exc)))
                except Exception as exc:  # a database error on one record: report it, go on
                    report.bad.append(Issue(str(path), line, gid, f"{type(exc).__name__}: {exc}"))
                else:
                    report.imported += 1
                    report.game_ids.append(rec.game_id)
                if on_record:
                    on_record(report)
        except OSError as exc:
            report.bad.append(Issue(str(path), 0, None, f"cannot read the file: {exc}"))
        except Exception as exc:  # an unreadable Parquet file, for instance
            report.bad.append(Issue(str(path), 0, None, f"cannot read the file: {type(exc).__name__}: {exc}"))
    async with db.session() as s, s.begin():
        await audit.record(
            s, actor, audit.IMPORT, None,
            {"files": [str(p) for p in paths], "imported": report.imported,
             "existing": report.existing, "bad": len(report.bad)},
        )
    return report
