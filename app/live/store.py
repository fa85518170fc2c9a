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
* PostgreSQL: the database's asyncpg pool. Appends without reactions are group-committed: one
  goes at once while a statement slot is free; while all are busy, those of every game that
  arrive go together in the next statement (one round trip for all, each game still checked
  against its expected version). With reactions, an append is a transaction of a few statements.

``create_game`` writes a new game (its players, the game row, its first event, an audit entry)
in one transaction on the same connections; its config index is claimed from the queue's
counter (``config_queues``) by one statement, outside that transaction on PostgreSQL, so that
creations never wait for each other. It is the only
way games are created live: the lobby's pairing and lobby-timeout fallback (``waiting``: seat
the players only if they still wait) and the admin API.

Reaction and creation statements are written once, with ``$n`` parameters, each used once and
in order, so SQLite runs them with ``?`` in their place.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from pydantic_core import to_json

from app.db.database import Database
from app.db.gamelog import (
    AppendRows,
    Conflict,
    append_sqlite_in_transaction,
    event_json,
    game_row,
    load_events,
    load_events_direct,
    pg_append,
)
from app.db.models import AuditEntry, Game, GameEvent, Participant
from app.game.rules import Event, GameConfig, GameCreated, GameRules, GameState, ListenerKind, Seat, new_game
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


# ---------------------------------------------------------------- game creation

CURRENT_ROUND = 'SELECT number FROM rounds WHERE "current" ORDER BY number DESC LIMIT 1'
ACTIVE_CHECKPOINT = (
    "SELECT id FROM checkpoints WHERE system = $1 AND active ORDER BY created_at DESC LIMIT 1"
)
# the queue's next index, claimed: the statement holds the queue's row for its own duration only
CLAIM_CONFIG_INDEX = (
    "INSERT INTO config_queues (queue, next_index) VALUES ($1, 1) ON CONFLICT (queue) "
    "DO UPDATE SET next_index = config_queues.next_index + 1 RETURNING next_index - 1"
)
SEAT_PARTICIPANT = (
    f"UPDATE participants SET status = '{Status.IN_GAME}', game_id = $1, seat = $2, waiting_since = NULL "
    "WHERE id = $3"
)
# the lobby's pairing: seat them only if they still wait (not paired by another process, not gone)
SEAT_WAITING_PARTICIPANT = SEAT_PARTICIPANT + f" AND status = '{Status.WAITING}'"
_TABLES = {t.name: t for t in (Game.__table__, GameEvent.__table__, Participant.__table__, AuditEntry.__table__)}


@lru_cache(maxsize=None)
def _json_columns(table: str) -> frozenset[str]:
    from sqlalchemy import JSON

    return frozenset(c.name for c in _TABLES[table].columns if isinstance(c.type, JSON))


@lru_cache(maxsize=None)
def _insert_sql(table: str, columns: tuple[str, ...]) -> str:
    values = ", ".join(f"${i + 1}" for i in range(len(columns)))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values})"


def insert_statement(table: str, row: dict) -> tuple[str, tuple]:
    """(INSERT with ``$n`` parameters, parameters) of one row; JSON columns as JSON text."""
    json_cols = _json_columns(table)
    params = tuple(to_json(v).decode() if c in json_cols else v for c, v in row.items())
    return _insert_sql(table, tuple(row)), params


def config_queue_key(system: str, round_: int | None) -> str:
    """The ``config_queues`` row of (system, round) (migration 0008 builds the same keys)."""
    return f"{system}/{'-' if round_ is None else round_}"


@dataclass
class NewGame:
    """A game to create with its first event, in one transaction with its players' rows.

    ``config`` None: the system's next config of the current round, ``next_config(n)`` for the
    n-th live game of (system, round) (the fair comparison, docs/method.md). ``players``: the
    participant id of each seat; ``new_participants``: rows inserted with the game (the admin
    API's bots); the other players exist and are seated. ``audit``: an ``audit_log`` row.
    ``waiting``: the existing players must still be waiting in the lobby's queue, else the
    creation rolls back with :class:`NotWaiting` (the lobby's pairing: another process paired
    one of them first, or they left)."""

    game_id: str
    listener_kind: ListenerKind
    system: str
    rules: GameRules
    at: float
    players: dict[Seat, str]
    next_config: Callable[[int], GameConfig]
    config: GameConfig | None = None
    split: str | None = None
    new_participants: list[dict] = field(default_factory=list)
    audit: dict | None = None
    waiting: bool = False


class NotWaiting(LookupError):
    """A player the lobby paired is no longer waiting: nothing was created; pair again."""


class _Ops:
    """What game creation asks of a connection (``$n`` statements)."""

    async def value(self, sql: str, *args):
        raise NotImplementedError

    async def execute(self, sql: str, *args) -> int:
        """Rows changed."""
        raise NotImplementedError

    async def claim_config_index(self, queue: str) -> int:
        """The queue's next config index, never handed out again."""
        return await self.value(CLAIM_CONFIG_INDEX, queue)

    async def insert(self, rows: list[tuple[str, dict]]) -> None:
        """Insert (table, row) pairs, in this order; a store may send them as one statement."""
        for table, row in rows:
            sql, params = insert_statement(table, row)
            await self.execute(sql, *params)

    async def notify(self, message: dict) -> bool:
        """Send ``message`` on the bus with this transaction, if the bus can; else False
        (the caller flushes it after the commit)."""
        return False


async def _create_game(ops: _Ops, new: NewGame) -> tuple[GameCreated, list[dict]]:
    """Game creation's statements, the same for every database. The config index is claimed
    after the players are seated, so that a pairing another process won (``NotWaiting``)
    uses none."""
    round_ = await ops.value(CURRENT_ROUND)
    checkpoint = None
    if new.listener_kind is ListenerKind.MODEL:
        checkpoint = await ops.value(ACTIVE_CHECKPOINT, new.system)
    seat_of = {pid: seat for seat, pid in new.players.items()}
    rows: list[tuple[str, dict]] = []
    for row in new.new_participants:
        seat = seat_of.pop(row["id"])
        rows.append(("participants", {
            **row, "status": Status.IN_GAME, "game_id": new.game_id, "seat": seat.value, "waiting_since": None,
        }))
    after_commit: list[dict] = []
    seat_sql = SEAT_WAITING_PARTICIPANT if new.waiting else SEAT_PARTICIPANT
    # players who existed before the game: seat them (in id order, so that two processes
    # pairing overlapping players lock their rows in the same order: no deadlock) and tell
    # their pages
    for pid, seat in sorted(seat_of.items()):
        if await ops.execute(seat_sql, new.game_id, seat.value, pid) != 1:
            if new.waiting:
                raise NotWaiting(pid)
            raise LookupError(f"no participant {pid} to seat")
        message = {"k": "p", "id": pid}
        if not await ops.notify(message):
            after_commit.append(message)
    if new.audit is not None:
        rows.append(("audit_log", new.audit))
    index, config = None, new.config
    if config is None:
        index = await ops.claim_config_index(config_queue_key(new.system, round_))
        config = new.next_config(index)
    created = GameCreated(
        game_id=new.game_id, config=config, rules=new.rules, listener_kind=new.listener_kind, at=new.at
    )
    state = new_game(created)
    rows.append(("games", {
        "id": new.game_id,
        "listener_kind": new.listener_kind.value,
        "config": config.model_dump(mode="json"),
        "rules": new.rules.model_dump(mode="json"),
        "created_at": new.at,
        "speaker_draft": "",
        **game_row(state),
        "system": new.system,
        "round": round_,
        "checkpoint": checkpoint,
        "split": new.split,
        "config_index": index,
        "speaker_id": new.players.get(Seat.SPEAKER),
        "listener_id": new.players.get(Seat.LISTENER),
        "source": "live",
    }))
    rows.append(("game_events", {
        "game_id": new.game_id, "seq": 1, "type": created.type, "at": created.at,
        "data": event_json(created), "actor": "server",
    }))
    await ops.insert(rows)
    return created, after_commit


class EventStore:
    """The interface (and what both databases share)."""

    def __init__(self, db: Database, bus: Bus) -> None:
        self.db = db
        self.bus = bus
        self.stats: dict[str, int] = {}

    async def commit(self, batch: Batch) -> Committed:
        raise NotImplementedError

    async def create_game(self, new: NewGame) -> GameCreated:
        """Create ``new`` in one transaction on the hot path's own connection (no ORM session:
        it cost a game start more CPU than a dozen actions). The pages of players who existed
        before the game (in any process, this one included) are told, with the transaction
        where the bus can (PostgreSQL), else right after it."""
        created, after_commit = await self._create_game(new)
        await self.bus.flush(after_commit)
        return created

    async def _create_game(self, new: NewGame) -> tuple[GameCreated, list[dict]]:
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


@lru_cache(maxsize=256)
def _qmark(sql: str) -> str:
    """A ``$n`` statement with SQLite's ``?`` parameters (a handful of statements, translated once)."""
    return _DOLLAR_PARAM.sub("?", sql)


class _SqliteOps(_Ops):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    async def value(self, sql: str, *args):
        row = self.conn.execute(_qmark(sql), args).fetchone()
        return None if row is None else row[0]

    async def execute(self, sql: str, *args) -> int:
        return self.conn.execute(_qmark(sql), args).rowcount


class SqliteEventStore(EventStore):
    def _writer(self) -> sqlite3.Connection:
        conn = self.db.sqlite_writer()
        if conn is None:
            raise RuntimeError(
                f"the live server needs its SQLite database in a file ({self.db.describe()} is not one)"
            )
        return conn

    async def _begin(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE: take the write lock now, waiting with short sleeps while another
        connection holds it (never blocking the loop)."""
        delay, waited = 0.0005, 0.0
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError:
                if waited > SQLITE_LOCK_PATIENCE:
                    raise
                self._count("sqlite_waits")
                await asyncio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 0.02)

    async def _create_game(self, new: NewGame) -> tuple[GameCreated, list[dict]]:
        conn = self._writer()
        await self._begin(conn)
        try:
            # every statement runs on this thread without suspending: the lock is held for
            # the transaction's CPU time only
            result = await _create_game(_SqliteOps(conn), new)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        self.db.sqlite_committed()
        return result

    async def commit(self, batch: Batch) -> Committed:
        conn = self._writer()
        rows = AppendRows(batch.before, batch.events, batch.after, batch.actor, batch.message.get("e"))
        await self._begin(conn)
        try:
            append_sqlite_in_transaction(conn, rows, batch.before)
            codes = self._react(conn, rows.game_id, batch.reactions)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        self.db.sqlite_committed()
        return Committed(codes, self._staged(batch))

    @staticmethod
    def _react(conn: sqlite3.Connection, game_id: str, reactions: Reactions) -> dict[Seat, str] | None:
        if not reactions:
            return None
        codes: dict[Seat, str] = {}
        for sql, params, seat in reaction_statements(game_id, reactions):
            cursor = conn.execute(_qmark(sql), params)
            if seat is not None:
                for (code,) in cursor.fetchall():
                    codes[seat] = code
        return codes if reactions.settlements else None


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:  # SQLite may have rolled back already
        pass


class _PostgresOps(_Ops):
    def __init__(self, conn, bus: Bus, db: Database) -> None:
        self.conn = conn
        self.bus = bus
        self.db = db

    async def value(self, sql: str, *args):
        return await self.conn.fetchval(sql, *args)

    async def execute(self, sql: str, *args) -> int:
        status = await self.conn.execute(sql, *args)  # "UPDATE 1", "INSERT 0 1"
        return int(status.rsplit(" ", 1)[-1])

    async def claim_config_index(self, queue: str) -> int:
        """Outside the creation's transaction (on a connection of its own when there is one):
        the queue's row is then held for the claim's statement only, not to the creation's
        commit, so creations do not wait for each other."""
        if not self.conn.is_in_transaction():
            return await self.conn.fetchval(CLAIM_CONFIG_INDEX, queue)
        async with self.db.asyncpg_connection() as conn:
            return await conn.fetchval(CLAIM_CONFIG_INDEX, queue)

    async def insert(self, rows: list[tuple[str, dict]]) -> None:
        """One statement (one round trip) for every row: the first ones as data-modifying
        ``WITH`` clauses; foreign keys are checked at the statement's end."""
        if len(rows) == 1:
            return await super().insert(rows)
        statements, params = [], []
        for table, row in rows:
            sql, values = insert_statement(table, row)
            offset = len(params)
            statements.append(_DOLLAR_PARAM.sub(lambda m: f"${int(m.group()[1:]) + offset}", sql))
            params += values
        head = ", ".join(f"i{i} AS ({sql})" for i, sql in enumerate(statements[:-1]))
        await self.conn.execute(f"WITH {head} {statements[-1]}", *params)

    async def notify(self, message: dict) -> bool:
        notify = self.bus.in_transaction(message)
        if notify is None:
            return False
        await self.conn.execute("SELECT pg_notify($1, $2)", *notify)
        return True


class _GroupFailed(Exception):
    """A group's statement failed: its appends go again one by one (``PostgresEventStore``)."""


class PostgresEventStore(EventStore):
    CREATORS = 4  # creations holding a pool connection at once
    FLUSHES = 6  # group statements in flight at once
    GROUP = 64  # appends per group statement, at most

    def __init__(self, db: Database, bus: Bus) -> None:
        super().__init__(db, bus)
        self._creating = asyncio.Semaphore(self.CREATORS)
        self._waiting: list[tuple[AppendRows, asyncio.Future]] = []
        self._flushing = 0  # group statements in flight
        self._flushes: set[asyncio.Task] = set()

    async def _create_game(self, new: NewGame) -> tuple[GameCreated, list[dict]]:
        """A few creations at a time in this process: each holds a pool connection (and, for
        its config claim, a second one briefly), and the appends of every game need the pool
        too."""
        async with self._creating, self.db.asyncpg_connection() as conn:
            ops = _PostgresOps(conn, self.bus, self.db)
            if set(new.players.values()) <= {p["id"] for p in new.new_participants}:
                # every row is new and goes in the one statement of ``ops.insert``, atomic on
                # its own: no transaction (two round trips fewer, the admin API's games)
                return await _create_game(ops, new)
            async with conn.transaction():  # players to seat (the lobby): with the rows
                return await _create_game(ops, new)

    async def commit(self, batch: Batch) -> Committed:
        """An append without reactions is group-committed (``_grouped``): under load, the
        appends of many games share one statement, one round trip and one pool connection
        instead of one each. With reactions, or when its group's statement failed, an append
        goes alone (``_commit_alone``)."""
        rows = AppendRows(batch.before, batch.events, batch.after, batch.actor, batch.message.get("e"))
        if not batch.reactions:
            try:
                await self._grouped(rows)
                return Committed(None, self._staged(batch))
            except _GroupFailed:  # the outcome may be unknown: alone, reading the log first
                self._count("group_fallbacks")
                return await self._commit_alone(batch, rows, check_first=True)
        return await self._commit_alone(batch, rows, check_first=False)

    async def _grouped(self, rows: AppendRows) -> None:
        """With a statement slot free, this append goes at once, itself (no wait for a group to
        form); with all of them in flight, it waits and goes with the others that came
        meanwhile, in the statement the first slot to free sends."""
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((rows, done))
        if self._flushing < self.FLUSHES:
            group = self._next_group()
            if group:
                self._flushing += 1
                await self._flush(group)
        await done

    def _next_group(self) -> list[tuple[AppendRows, asyncio.Future]]:
        """The waiting appends of distinct games (a game's next append waits for its previous
        one), up to ``GROUP``, oldest first; taken out of the queue."""
        group: list[tuple[AppendRows, asyncio.Future]] = []
        later: list[tuple[AppendRows, asyncio.Future]] = []
        games: set[str] = set()
        for item in self._waiting:
            if item[1].done():  # its command was cancelled before the statement
                continue
            if len(group) < self.GROUP and item[0].game_id not in games:
                games.add(item[0].game_id)
                group.append(item)
            else:
                later.append(item)
        self._waiting = later
        return group

    async def _flush(self, group: list[tuple[AppendRows, asyncio.Future]]) -> None:
        """One group statement, in a slot its caller counted in ``_flushing``; then the next
        groups of those that waited, while slots are free."""
        import asyncpg

        try:
            sql, args = pg_append([rows for rows, _ in group])
            async with self.db.asyncpg_connection() as conn:
                appended = {record[0] for record in await conn.fetch(sql, *args)}
        except BaseException as exc:  # its leader cancelled too: the others must not hang
            for _, done in group:
                if not done.done():
                    done.set_exception(_GroupFailed(repr(exc)))
            if not isinstance(exc, Exception):
                raise
            if isinstance(exc, (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError)):
                await self.db.expire_asyncpg_connections()
        else:
            self._count("groups")
            for rows, done in group:
                if not done.done():
                    if rows.game_id in appended:
                        done.set_result(None)
                    else:
                        done.set_exception(Conflict(rows.game_id))
        finally:
            self._flushing -= 1
            while self._waiting and self._flushing < self.FLUSHES:
                group = self._next_group()
                if not group:
                    break
                self._flushing += 1
                task = asyncio.ensure_future(self._flush(group))
                self._flushes.add(task)
                task.add_done_callback(self._flushes.discard)

    async def _commit_alone(self, batch: Batch, rows: AppendRows, check_first: bool) -> Committed:
        """The append as one statement; with reactions, in a transaction with their rows and
        the workers' wake-up (``pg_notify`` is transactional: sent only if this commits).

        When the connection breaks mid-commit (the server restarted) the outcome is unknown:
        the log is read back on a fresh connection, and the batch is sent again only if its
        events are not there, so an action is never applied twice."""
        import asyncpg

        statement, args = pg_append([rows])
        reactions = batch.reactions
        for attempt in range(3):
            try:
                async with self.db.asyncpg_connection() as conn:
                    if (attempt or check_first) and await self._already_committed(conn, rows):
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
                await self.db.expire_asyncpg_connections()
        raise AssertionError("unreachable")

    @staticmethod
    async def _append(conn, statement: str, args: list, game_id: str) -> None:
        import asyncpg

        try:
            if not await conn.fetch(statement, *args):
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
