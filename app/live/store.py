"""The event store: the one way the live tier commits a game's events.

``commit`` takes a batch (the events of one decided command, the states before and after, its
:class:`~app.live.reactions.Reactions`) and writes, in one transaction, the events, the derived
``games`` and ``turns`` rows, the reactions' rows and, where the bus needs it, the bus message
that must not outlive a rollback (the workers' wake-up). It raises
:class:`~app.db.gamelog.Conflict` when another writer appended to the game first. There is one
implementation per database, and this module is the only part of the hot path that knows which
one it runs on:

* SQLite: plain statements on the database's one writer connection (``Database.sqlite_writer``),
  run without yielding to the event loop, so SQLite's single write lock is held for the
  transaction's CPU time only; when another connection holds it, wait with short sleeps.
* PostgreSQL: the database's asyncpg pool; the append alone is one statement (one round trip),
  with reactions it is a transaction of a few.

Reaction statements are written once, with ``$n`` parameters, each used once and in order, so
SQLite runs them with ``?`` in their place.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from dataclasses import dataclass

from app.db.database import Database
from app.db.gamelog import (
    AppendRows,
    Conflict,
    pg_append_statement,
    append_sqlite_in_transaction,
    load_events,
    load_events_direct,
)
from app.game.rules import Event, GameState, Seat
from app.live.bus import Bus
from app.live.participants import Status
from app.live.reactions import Reactions

SQLITE_LOCK_PATIENCE = 30.0  # seconds of short waits for SQLite's write lock (its busy timeout)

SETTLE_COMPLETED = (
    f"UPDATE participants SET finished_at = $1, status = '{Status.COMPLETED}', "
    "completion_code = COALESCE(completion_code, $2), "
    "pay_base_cents = $3, pay_bonus_cents = $4, pay_success_cents = $5 "
    "WHERE game_id = $6 AND seat = $7 RETURNING completion_code"
)
SETTLE_FORFEITED = (
    f"UPDATE participants SET finished_at = $1, status = '{Status.FORFEITED}', completion_code = NULL, "
    "pay_base_cents = 0, pay_bonus_cents = 0, pay_success_cents = 0 WHERE game_id = $2 AND seat = $3"
)
CANCEL_LISTENER_REQUESTS = (
    "UPDATE listener_requests SET status = 'cancelled' "
    "WHERE game_id = $1 AND status IN ('pending', 'claimed')"
)
INSERT_LISTENER_REQUEST = (
    "INSERT INTO listener_requests (game_id, turn, system, checkpoint, status, created_at, deadline, attempts) "
    "SELECT id, CAST($1 AS INTEGER), COALESCE(NULLIF(system, ''), 'model'), checkpoint, 'pending', "
    "CAST($2 AS DOUBLE PRECISION), CAST($3 AS DOUBLE PRECISION), 0 FROM games WHERE id = $4"
)
_DOLLAR_PARAM = re.compile(r"\$\d+")


@dataclass
class Batch:
    """One decided command: its events, the states around them, who acted, what else to write,
    and the game message every process's hub receives after the commit."""

    before: GameState
    events: list[Event]
    after: GameState
    actor: str
    reactions: Reactions
    message: dict


@dataclass
class Committed:
    codes: dict[Seat, str] | None  # completion codes of the seats paid by this commit
    staged: list[dict]  # for ``Bus.flush``, after the commit


def reaction_statements(game_id: str, reactions: Reactions) -> list[tuple[str, tuple, Seat | None]]:
    """(statement, parameters, seat whose completion code it returns) for each reaction row."""
    out: list[tuple[str, tuple, Seat | None]] = []
    for s in reactions.settlements:
        if s.forfeited:
            out.append((SETTLE_FORFEITED, (s.finished_at, game_id, s.seat.value), None))
        else:
            pay = s.pay
            out.append((
                SETTLE_COMPLETED,
                (s.finished_at, s.completion_code, pay.base_cents, pay.bonus_cents, pay.success_cents,
                 game_id, s.seat.value),
                s.seat,
            ))
    if reactions.cancel_listener_requests:
        out.append((CANCEL_LISTENER_REQUESTS, (game_id,), None))
    for t in reactions.listener_turns:
        out.append((INSERT_LISTENER_REQUEST, (t.turn, t.created_at, t.deadline, game_id), None))
    return out


class EventStore:
    """The interface (and what both databases share)."""

    def __init__(self, db: Database, bus: Bus) -> None:
        self.db = db
        self.bus = bus
        self.stats: dict[str, int] = {}

    async def commit(self, batch: Batch) -> Committed:
        raise NotImplementedError

    async def load_events(self, game_id: str, after_seq: int = 0) -> list[Event]:
        """The game's events after ``after_seq`` (read on the hot path's own connections)."""
        events = await load_events_direct(self.db, game_id, after_seq)
        if events is None:  # no direct read right now: through a session
            async with self.db.session() as s:
                events = await load_events(s, game_id, after_seq)
        return events

    def _staged(self, batch: Batch) -> list[dict]:
        staged = [self.bus.stage_after_commit(batch.message)]
        if batch.reactions.wake_listeners:
            staged.append(self._wake(batch))
        return staged

    @staticmethod
    def _wake(batch: Batch) -> dict:
        return {"k": "r", "id": batch.after.game_id}

    def _count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1


class SqliteEventStore(EventStore):
    async def commit(self, batch: Batch) -> Committed:
        conn = self.db.sqlite_writer()
        if conn is None:
            raise RuntimeError(
                f"the live server needs its SQLite database in a file ({self.db.describe()} is not one)"
            )
        rows = AppendRows(batch.before, batch.events, batch.after, batch.actor, batch.message.get("e"))
        delay, waited = 0.0005, 0.0
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError:  # another connection writes: never block the loop
                if waited > SQLITE_LOCK_PATIENCE:
                    raise
                self._count("sqlite_waits")
                await asyncio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 0.02)
        try:
            append_sqlite_in_transaction(conn, rows)
            codes = self._react(conn, rows.game_id, batch.reactions)
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:  # SQLite may have rolled back already
                pass
            raise
        self.db.sqlite_committed()
        return Committed(codes, self._staged(batch))

    @staticmethod
    def _react(conn: sqlite3.Connection, game_id: str, reactions: Reactions) -> dict[Seat, str] | None:
        if not reactions:
            return None
        codes: dict[Seat, str] = {}
        for sql, params, seat in reaction_statements(game_id, reactions):
            cursor = conn.execute(_DOLLAR_PARAM.sub("?", sql), params)
            if seat is not None:
                for (code,) in cursor.fetchall():
                    codes[seat] = code
        return codes if reactions.settlements else None


class PostgresEventStore(EventStore):
    async def commit(self, batch: Batch) -> Committed:
        """The append as one statement; with reactions, in a transaction with their rows and
        the workers' wake-up (``pg_notify`` is transactional: sent only if this commits).

        When the connection breaks mid-commit (the server restarted) the outcome is unknown:
        the log is read back on a fresh connection, and the batch is sent again only if its
        events are not there, so an action is never applied twice."""
        import asyncpg

        rows = AppendRows(batch.before, batch.events, batch.after, batch.actor, batch.message.get("e"))
        statement = pg_append_statement(rows.game_cols, rows.turn_cols, len(rows.events), len(rows.turns))
        args: list = [rows.game_id, rows.version, *rows.game]
        for event in rows.events:
            args += event[1:]  # without game_id
        for turn in rows.turns:
            args += turn[1:]
        reactions = batch.reactions
        for attempt in range(3):
            try:
                async with self.db.asyncpg_connection() as conn:
                    if attempt and await self._already_committed(conn, rows):
                        codes = await self._codes(conn, rows.game_id) if reactions.settlements else None
                        return Committed(codes, self._staged(batch))
                    if not reactions:
                        await self._append(conn, statement, args, rows.game_id)
                        return Committed(None, self._staged(batch))
                    async with conn.transaction():
                        await self._append(conn, statement, args, rows.game_id)
                        codes = await self._react(conn, batch)
                    return Committed(codes, self._staged(batch))
            except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError):
                if attempt == 2:
                    raise
                self.db.expire_asyncpg_connections()
        raise AssertionError("unreachable")

    @staticmethod
    async def _append(conn, statement: str, args: list, game_id: str) -> None:
        import asyncpg

        try:
            if await conn.fetchval(statement, *args) != 1:
                raise Conflict(game_id)
        except asyncpg.UniqueViolationError as exc:
            raise Conflict(game_id) from exc

    @staticmethod
    async def _already_committed(conn, rows: AppendRows) -> bool:
        found = await conn.fetch(
            "SELECT type, at FROM game_events WHERE game_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            rows.game_id, rows.version, len(rows.events),
        )
        if [(r["type"], r["at"]) for r in found] == [(e[2], e[3]) for e in rows.events]:
            return True
        if found:
            raise Conflict(rows.game_id)
        return False

    async def _react(self, conn, batch: Batch) -> dict[Seat, str] | None:
        reactions = batch.reactions
        codes: dict[Seat, str] = {}
        for sql, params, seat in reaction_statements(batch.after.game_id, reactions):
            if seat is None:
                await conn.execute(sql, *params)
            else:
                for record in await conn.fetch(sql, *params):
                    codes[seat] = record[0]
        if reactions.wake_listeners:
            notify = self.bus.in_transaction(self._wake(batch))
            if notify is not None:
                await conn.execute("SELECT pg_notify($1, $2)", *notify)
        return codes if reactions.settlements else None

    @staticmethod
    async def _codes(conn, game_id: str) -> dict[Seat, str]:
        rows = await conn.fetch(
            "SELECT seat, completion_code FROM participants WHERE game_id = $1", game_id
        )
        return {Seat(r["seat"]): r["completion_code"] for r in rows if r["seat"] and r["completion_code"]}


def event_store(db: Database, bus: Bus) -> EventStore:
    """The store for ``db``'s database."""
    stores = {"sqlite": SqliteEventStore, "postgresql": PostgresEventStore}
    try:
        return stores[db.dialect](db, bus)
    except KeyError:
        raise RuntimeError(f"no event store for {db.dialect} databases") from None
