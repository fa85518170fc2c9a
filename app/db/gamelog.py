"""Reading and appending the per-game event log, and projecting it onto the derived tables.

``append`` writes events with consecutive sequence numbers; the unique (game_id, seq) key makes
two writers racing on one game (two server processes, a sweeper and a player) collide instead
of interleaving: the loser gets :class:`Conflict`, reloads and decides again. The derived rows
(games, turns) are pure functions of the replayed state (``game_row``, ``turn_row``), which is
what lets the checker compare them with a fresh replay.
"""

from __future__ import annotations

import json
import sqlite3
from functools import lru_cache
from typing import get_args

from pydantic_core import to_json
from sqlalchemy import JSON, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Game, GameEvent, Turn
from app.game.rules import (
    EVENT_ADAPTER,
    Event,
    GameCreated,
    GameState,
    Phase,
    TurnRecord,
    event_from_dict,
    new_game,
    replay,
)


class Conflict(Exception):
    """Another writer appended to this game first."""


def event_json(event: Event) -> dict:
    return EVENT_ADAPTER.dump_python(event, mode="json")


def game_row(state: GameState) -> dict:
    """The ``games`` columns that follow from the event log."""
    return {
        "status": "ended" if state.phase is Phase.ENDED else "live",
        "phase": state.phase.value,
        "turn": state.turn,
        "version": state.version,
        "selection": sorted(state.selection),
        "started_at": state.started_at,
        "ended_at": state.ended_at,
        "next_deadline": state.next_deadline(),
        "end_reason": state.end_reason.value if state.end_reason else None,
        "outcome": state.outcome.value if state.outcome else None,
    }


def turn_row(game_id: str, t: TurnRecord) -> dict:
    return {
        "game_id": game_id,
        "turn": t.turn,
        "started_at": t.started_at,
        "utterance": t.utterance,
        "auto_sent": t.auto_sent,
        "sent_at": t.sent_at,
        "selection_before": list(t.selection_before),
        "selection_after": list(t.selection_after) if t.selection_after is not None else None,
        "selected": list(t.selected),
        "deselected": list(t.deselected),
        "clicks": [[tid, sel] for tid, sel in t.clicks],
        "auto_submitted": t.auto_submitted,
        "submitted_at": t.submitted_at,
        "sec_until_send": round(t.sent_at - t.started_at, 3) if t.sent_at is not None else None,
        "sec_until_submit": (
            round(t.submitted_at - t.started_at, 3) if t.submitted_at is not None else None
        ),
    }


async def create_game(session: AsyncSession, created: GameCreated, **columns) -> GameState:
    """Insert a new game with its first event (seq 1). Caller commits."""
    state = new_game(created)
    session.add(
        Game(
            id=created.game_id,
            listener_kind=created.listener_kind.value,
            config=created.config.model_dump(mode="json"),
            rules=created.rules.model_dump(mode="json"),
            created_at=created.at,
            speaker_draft="",
            **game_row(state),
            **columns,
        )
    )
    await session.flush()
    session.add(
        GameEvent(
            game_id=created.game_id,
            seq=1,
            type=created.type,
            at=created.at,
            data=event_json(created),
            actor="server",
        )
    )
    await session.flush()
    return state


# ---------------------------------------------------------------- the append hot path
#
# Every player action appends a few events, updates one ``games`` row and upserts the current
# ``turns`` row. Going through the ORM (statement construction, compilation, cache keys) cost
# about 3 ms of CPU per action; the statements below are plain SQL built once per dialect from
# the same column lists (``game_row``, ``turn_row``) and run with the driver's own parameters.

EVENT_COLUMNS = ("game_id", "seq", "type", "at", "data", "actor")


@lru_cache(maxsize=None)
def _json_columns(table_name: str) -> frozenset[str]:
    table = {t.name: t for t in (GameEvent.__table__, Game.__table__, Turn.__table__)}[table_name]
    return frozenset(c.name for c in table.columns if isinstance(c.type, JSON))


def _param(dialect: str, i: int) -> str:
    return "?" if dialect == "sqlite" else f"${i}"


@lru_cache(maxsize=None)
def _append_sql(dialect: str, game_cols: tuple[str, ...], turn_cols: tuple[str, ...]) -> tuple[str, str, str]:
    """(insert events, update games, upsert turns) in the driver's parameter style."""
    p = lambda i: _param(dialect, i)  # noqa: E731
    insert_events = (
        f"INSERT INTO game_events ({', '.join(EVENT_COLUMNS)}) "
        f"VALUES ({', '.join(p(i + 1) for i in range(len(EVENT_COLUMNS)))})"
    )
    n = len(game_cols)
    update_game = (
        "UPDATE games SET "
        + ", ".join(f"{c} = {p(i + 1)}" for i, c in enumerate(game_cols))
        + f" WHERE id = {p(n + 1)} AND version = {p(n + 2)}"
    )
    upsert_turns = (
        f"INSERT INTO turns ({', '.join(turn_cols)}) "
        f"VALUES ({', '.join(p(i + 1) for i in range(len(turn_cols)))}) "
        "ON CONFLICT (game_id, turn) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in turn_cols if c not in ("game_id", "turn"))
    )
    return insert_events, update_game, upsert_turns


def _dump(value) -> str:
    """A JSON column's text (None becomes JSON null, as with SQLAlchemy's JSON type).
    pydantic-core's encoder: a tenth of ``json.dumps``'s time on these small values, which
    every append writes several of."""
    return to_json(value).decode()


@lru_cache(maxsize=None)
def _json_positions(table_name: str, columns: tuple[str, ...]) -> tuple[int, ...]:
    """Where in a row of ``columns`` the JSON columns are (their values are sent as JSON text)."""
    json_cols = _json_columns(table_name)
    return tuple(i for i, c in enumerate(columns) if c in json_cols)


def _row_values(table_name: str, row: dict) -> tuple[tuple[str, ...], tuple]:
    """(columns, values) of ``row``, JSON columns as JSON text."""
    cols = tuple(row)
    values = list(row.values())
    for i in _json_positions(table_name, cols):
        values[i] = _dump(values[i])
    return cols, tuple(values)


# the events that name a turn: an append rewrites the ``turns`` rows from the first one on
_TURN_EVENT_TYPES = frozenset(cls for cls in get_args(get_args(Event)[0]) if "turn" in cls.model_fields)


class AppendRows:
    """The parameters of one append (``app.live.store``'s per-database statements), computed once."""

    __slots__ = ("game_id", "version", "events", "game_cols", "game", "turn_cols", "turns")

    def __init__(
        self, before: GameState, events: list[Event], after: GameState, actor: str,
        data: list[dict] | None = None,
    ) -> None:
        """``data``: the events' ``event_json``, when the caller has it already (the bus
        message carries it)."""
        game_id = self.game_id = before.game_id
        version = self.version = before.version
        if data is None:
            data = [event_json(e) for e in events]
        self.events = [
            (game_id, version + i + 1, e.type, e.at, _dump(d), actor)
            for i, (e, d) in enumerate(zip(events, data, strict=True))
        ]
        values = game_row(after)
        # a sent draft is in the event log; an unsent one is not kept past the game's end
        first = None
        for e in events:
            if e.type in ("utterance_sent", "game_ended"):
                values["speaker_draft"] = ""
            if type(e) in _TURN_EVENT_TYPES and (first is None or e.turn < first):
                first = e.turn
        self.game_cols, self.game = _row_values("games", values)
        self.turn_cols: tuple[str, ...] = ()
        self.turns: list[tuple] = []
        if first is not None and after.turns:
            for t in after.turns:
                if t.turn >= first:
                    self.turn_cols, row = _row_values("turns", turn_row(game_id, t))
                    self.turns.append(row)

    def sql(self, dialect: str) -> tuple[str, str, str]:
        return _append_sql(dialect, self.game_cols, self.turn_cols)


async def append(
    session: AsyncSession,
    before: GameState,
    events: list[Event],
    after: GameState,
    actor: str,
) -> None:
    """Append ``events`` (which took ``before`` to ``after``) and update the derived rows.

    Raises :class:`Conflict` when another writer got there first. Caller commits.
    """
    rows = AppendRows(before, events, after, actor)
    conn = await session.connection()
    insert_events, update_game, upsert_turns = rows.sql(conn.dialect.name)
    try:
        if len(rows.events) == 1:
            await conn.exec_driver_sql(insert_events, rows.events[0])
        else:
            await conn.exec_driver_sql(insert_events, rows.events)
    except IntegrityError as exc:
        raise Conflict(rows.game_id) from exc
    result = await conn.exec_driver_sql(update_game, (*rows.game, rows.game_id, rows.version))
    if result.rowcount != 1:
        raise Conflict(rows.game_id)
    if rows.turns:
        await conn.exec_driver_sql(upsert_turns, rows.turns[0] if len(rows.turns) == 1 else rows.turns)


def changed_game_values(before: GameState, rows: AppendRows) -> tuple[tuple[str, ...], tuple]:
    """The ``games`` columns of ``rows`` (with their values) that differ from ``before``'s row.

    The row an append updates is ``game_row(before)`` (its derived columns are written only by
    the game's creation and its appends, and the UPDATE checks the version), so setting only
    what changed leaves the same row. On SQLite that matters: an UPDATE rewrites the entries of
    every index on a column it sets, changed or not (``status``, ``next_deadline``): measured
    3.1-3.6 WAL pages and ~55 µs per commit against 1.0 page and ~25 µs for a click's
    (``version``, ``selection``). Columns that are not derived (``speaker_draft``) are always set."""
    old = game_row(before)
    json_at = _json_positions("games", rows.game_cols)
    cols, values = [], []
    for i, (col, value) in enumerate(zip(rows.game_cols, rows.game)):
        if col in old:
            was = _dump(old[col]) if i in json_at else old[col]
            if was == value and type(was) is type(value):
                continue
        cols.append(col)
        values.append(value)
    return tuple(cols), tuple(values)


def append_sqlite_in_transaction(conn: sqlite3.Connection, rows: AppendRows, before: GameState) -> None:
    """``append``'s statements on a plain sqlite3 connection, in the caller's transaction, the
    ``games`` row updated in the columns that change only (``changed_game_values``; ``before``:
    the state ``rows`` start from). Raises :class:`Conflict` like ``append``."""
    insert_events, _, upsert_turns = rows.sql("sqlite")
    try:
        conn.executemany(insert_events, rows.events)
    except sqlite3.IntegrityError as exc:
        raise Conflict(rows.game_id) from exc
    cols, values = changed_game_values(before, rows)
    update_game = _append_sql("sqlite", cols, rows.turn_cols)[1]
    if conn.execute(update_game, (*values, rows.game_id, rows.version)).rowcount != 1:
        raise Conflict(rows.game_id)
    if rows.turns:
        conn.executemany(upsert_turns, rows.turns)


@lru_cache(maxsize=None)
def _pg_types(table_name: str) -> dict[str, str]:
    from sqlalchemy.dialects import postgresql

    table = {t.name: t for t in (GameEvent.__table__, Game.__table__, Turn.__table__)}[table_name]
    return {c.name: c.type.compile(dialect=postgresql.dialect()) for c in table.columns}


@lru_cache(maxsize=None)
def pg_append_statement(game_cols: tuple[str, ...], turn_cols: tuple[str, ...]) -> str:
    """Any number of appends, to distinct games, as one statement (one round trip, atomic on
    its own): update each game row that is still at its expected version, and only for those
    insert the events and upsert the turns; returns the ids of the games appended to (a game
    missing from them lost a race: :class:`Conflict`). Parameters (``pg_append``): one array
    per column, JSON values as their text (cast to the column's type in the statement). One
    shape per (game columns, turn columns), whatever the number of appends, events and turns."""
    n = 0

    def arrays(table: str, cols) -> list[str]:
        nonlocal n
        types = _pg_types(table)
        out = []
        for c in cols:
            n += 1
            out.append(f"${n}::{'TEXT' if c in _json_columns(table) else types[c]}[]")
        return out

    def value(table: str, c: str) -> str:
        return f"x.{c}::{_pg_types(table)[c]}" if c in _json_columns(table) else f"x.{c}"

    game_in = arrays("games", ("id", "version", *game_cols, "speaker_draft"))
    game_set = [f"{c} = {value('games', c)}" for c in game_cols]
    # None: the draft is kept (an append that neither sent nor ended clears nothing)
    game_set.append("speaker_draft = COALESCE(x.draft, games.speaker_draft)")
    sql = (
        f"WITH g AS (UPDATE games SET {', '.join(game_set)} "
        f"FROM unnest({', '.join(game_in)}) AS x(id, expected, {', '.join(game_cols)}, draft) "
        "WHERE games.id = x.id AND games.version = x.expected RETURNING games.id)"
        f", e AS (INSERT INTO game_events ({', '.join(EVENT_COLUMNS)}) "
        f"SELECT {', '.join(value('game_events', c) for c in EVENT_COLUMNS)} "
        f"FROM unnest({', '.join(arrays('game_events', EVENT_COLUMNS))}) WITH ORDINALITY "
        f"AS x({', '.join(EVENT_COLUMNS)}, ord) JOIN g ON g.id = x.game_id ORDER BY x.ord)"
    )
    if turn_cols:
        sql += (
            f", t AS (INSERT INTO turns ({', '.join(turn_cols)}) "
            f"SELECT {', '.join(value('turns', c) for c in turn_cols)} "
            f"FROM unnest({', '.join(arrays('turns', turn_cols))}) AS x({', '.join(turn_cols)}) "
            "JOIN g ON g.id = x.game_id "
            "ON CONFLICT (game_id, turn) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in turn_cols if c not in ("game_id", "turn"))
            + ")"
        )
    return sql + " SELECT id FROM g"


def pg_append(appends: list[AppendRows]) -> tuple[str, list]:
    """``pg_append_statement`` and its parameters for ``appends`` (of distinct games)."""
    game_cols = tuple(c for c in appends[0].game_cols if c != "speaker_draft")
    turn_cols = next((a.turn_cols for a in appends if a.turns), ())
    game: list[list] = [[] for _ in range(len(game_cols) + 3)]  # id, expected, the columns, draft
    for a in appends:
        values = dict(zip(a.game_cols, a.game))
        game[0].append(a.game_id)
        game[1].append(a.version)
        for i, c in enumerate(game_cols, 2):
            game[i].append(values[c])
        game[-1].append(values.get("speaker_draft"))
    events = [list(col) for col in zip(*(e for a in appends for e in a.events))]
    turns = [list(col) for col in zip(*(t for a in appends for t in a.turns))] if turn_cols else []
    return pg_append_statement(game_cols, turn_cols), [*game, *events, *turns]


async def load_events(session: AsyncSession, game_id: str, after_seq: int = 0) -> list[Event]:
    rows = await session.execute(
        select(GameEvent.data)
        .where(GameEvent.game_id == game_id, GameEvent.seq > after_seq)
        .order_by(GameEvent.seq)
    )
    return [event_from_dict(data) for (data,) in rows]


async def load_events_direct(db, game_id: str, after_seq: int = 0) -> list[Event] | None:
    """``load_events`` through ``Database.fetch`` (no session); None when it is not available."""
    rows = await db.fetch(
        "SELECT data FROM game_events WHERE game_id = $1 AND seq > $2 ORDER BY seq",
        game_id, after_seq,
    )
    if rows is None:
        return None
    return [event_from_dict(json.loads(d) if isinstance(d, str) else d) for (d,) in rows]


async def load_state(session: AsyncSession, game_id: str) -> GameState | None:
    events = await load_events(session, game_id)
    return replay(events) if events else None
