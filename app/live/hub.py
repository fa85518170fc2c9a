"""The live driver of games: runs commands through the rules engine, commits, then broadcasts.

The database is the truth; this process only caches the state of games that have a player
connected here. A command is decided against the cached state and appended with optimistic
concurrency (``app.db.gamelog.append``): if another process wrote first, the cache is reloaded
and the command decided again, so nothing is applied twice. Every committed change is sent on
the bus, which is how players connected to different processes see each other.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

from sqlalchemy import select

from app.db.database import Database
from app.db.gamelog import (
    AppendRows,
    Conflict,
    append,
    append_asyncpg,
    append_sqlite,
    append_sqlite_in_transaction,
    event_json,
    load_events,
    load_events_direct,
    load_state,
)
from app.db.models import Game, ListenerRequest, Participant
from app.game.rules import (
    Command,
    Event,
    GameEnded,
    GameState,
    Join,
    Disconnect,
    ListenerKind,
    Rejection,
    Seat,
    Tick,
    UtteranceSent,
    decide,
    evolve,
    event_from_dict,
    game_pay,
    replay,
)
from app.live.bus import Bus
from app.live.participants import completion_redirect, settle_game
from app.protocol import ErrorFrame, GameView, StateFrame

log = logging.getLogger("multiref.hub")

Clock = Callable[[], float]
SQLITE_LOCK_PATIENCE = 5.0  # seconds of short waits for SQLite's write lock before using a session


class _WouldSuspend(Exception):
    """A coroutine run by ``_run_now`` awaited something that is not ready."""


def _run_now(coro):
    """Run a coroutine that must complete without suspending (it awaits only ``_SyncSession``
    calls); raise ``_WouldSuspend``, having closed it, if it would wait for anything."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise _WouldSuspend()


class _SyncSession:
    """The part of ``AsyncSession`` that ``_react`` (and ``settle_game``) use, over a
    synchronous ``Session``: awaiting these never suspends."""

    def __init__(self, session) -> None:
        self.sync_session = session

    async def execute(self, *args, **kwargs):
        return self.sync_session.execute(*args, **kwargs)

    async def get(self, *args, **kwargs):
        return self.sync_session.get(*args, **kwargs)

    async def flush(self, *args, **kwargs) -> None:
        self.sync_session.flush(*args, **kwargs)

    def add(self, instance) -> None:
        self.sync_session.add(instance)

    def add_all(self, instances) -> None:
        self.sync_session.add_all(instances)


class Connection:
    """One player's websocket, with an outbox so a slow client never blocks a broadcast."""

    OUTBOX = 512

    def __init__(self, send_text: Callable[[str], Awaitable[None]], address: str = "") -> None:
        self._send_text = send_text
        self.address = address
        self.participant_id: str | None = None
        self.game_id: str | None = None
        self.seat: Seat | None = None
        self.on_participant_change: Callable[[], Awaitable[None]] | None = None
        self.view_version = 0  # the newest game version whose view was queued to this socket
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(self.OUTBOX)
        self._writer = asyncio.create_task(self._write())
        self.closed = asyncio.Event()

    def send(self, payload: str) -> None:
        if self.closed.is_set():
            return
        try:
            self._queue.put_nowait(payload)
        except asyncio.QueueFull:  # a client that stopped reading: drop it, it will reconnect
            log.warning("outbox full, closing connection of %s", self.participant_id)
            self.closed.set()

    def send_frame(self, frame) -> None:
        self.send(frame.model_dump_json())

    async def _write(self) -> None:
        try:
            while True:
                payload = await self._queue.get()
                if payload is None:
                    return
                await self._send_text(payload)
        except Exception:
            self.closed.set()

    async def close(self, drain_seconds: float = 1.0) -> None:
        """Send what is queued (up to ``drain_seconds``), then stop the writer."""
        try:
            self._queue.put_nowait(None)
            await asyncio.wait_for(asyncio.shield(self._writer), timeout=drain_seconds)
        except (asyncio.QueueFull, TimeoutError, Exception):
            pass
        self.closed.set()
        self._writer.cancel()
        try:
            await self._writer
        except (asyncio.CancelledError, Exception):
            pass


class GameHub:
    def __init__(self, db: Database, bus: Bus, clock: Clock = time.time) -> None:
        self.db = db
        self.bus = bus
        self.clock = clock
        self.states: dict[str, GameState] = {}
        self.codes: dict[str, dict[Seat, str]] = {}
        self.locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.game_conns: defaultdict[str, set[Connection]] = defaultdict(set)
        self.participant_conns: defaultdict[str, set[Connection]] = defaultdict(set)
        self.on_listener_request: Callable[[], None] | None = None
        self.prolific_code = ""  # the study's Prolific code: sent only with an earned code
        self.stats = {"commands": 0, "events": 0, "conflicts": 0, "rejections": 0}
        bus.subscribe(self.on_bus)

    # ------------------------------------------------------------ state

    async def state(self, game_id: str) -> GameState | None:
        """The latest committed state (cached for games with local players)."""
        state = self.states.get(game_id)
        events = await load_events_direct(self.db, game_id, state.version if state else 0)
        if events is not None:
            if state is None:
                state = replay(events) if events else None
            else:
                for e in events:
                    state = evolve(state, e)
        else:
            async with self.db.session() as s:
                if state is None:
                    state = await load_state(s, game_id)
                else:
                    for e in await load_events(s, game_id, state.version):
                        state = evolve(state, e)
        if state is not None and game_id in self.game_conns:
            cached = self.states.get(game_id)
            if cached is not None and cached.version > state.version:
                # a command committed while we read: never move the cache backwards
                return cached
            self.states[game_id] = state
        return state

    async def execute(
        self, game_id: str, cmd: Command, *, version: int | None = None, actor: str = "server"
    ) -> tuple[GameState | None, list[Event] | Rejection]:
        """Decide ``cmd``; commit and broadcast its events. ``version``: the client's view."""
        self.stats["commands"] += 1
        async with self.locks[game_id]:
            reloaded = False
            for _ in range(6):
                state = self.states.get(game_id) or await self.state(game_id)
                if state is None:
                    return None, Rejection("unknown_game", "There is no such game.")
                if reloaded:  # another writer got there first: our sockets may be behind it
                    await self._send_if_behind(state)
                due = state.next_deadline()
                if not isinstance(cmd, Tick) and due is not None and cmd.at >= due:
                    # A deadline passed before this command arrived and no sweeper has fired it
                    # yet: time goes first, so a click after the turn ended is not applied.
                    draft = await self._speaker_draft(game_id)
                    try:
                        state = await self._apply(state, decide(state, Tick(at=cmd.at, speaker_draft=draft)), "server")
                    except Conflict:
                        self.stats["conflicts"] += 1
                        self.states.pop(game_id, None)
                        reloaded = True
                        continue
                if version is not None and version != state.version and not state.ended:
                    self.stats["rejections"] += 1
                    return state, Rejection(
                        "stale_version",
                        "The game changed before your action arrived; it was not applied.",
                    )
                result = decide(state, cmd)
                if isinstance(result, Rejection):
                    self.stats["rejections"] += 1
                    return state, result
                if not result:
                    return state, result
                try:
                    after = await self._apply(state, result, actor)
                except Conflict:
                    self.stats["conflicts"] += 1
                    self.states.pop(game_id, None)
                    reloaded = True
                    continue
                return after, result
            return None, Rejection("busy", "The game is busy; please try again.")

    async def _apply(self, state: GameState, events: list[Event], actor: str) -> GameState:
        """Commit ``events`` and broadcast them; the new state. Raises Conflict when another
        writer committed first."""
        if not events:
            return state
        after = state
        for e in events:
            after = evolve(after, e)
        staged, codes = await self._commit(state, events, after, actor)
        self.stats["events"] += len(events)
        game_id = state.game_id
        if codes:
            self.codes[game_id] = codes
        if game_id in self.game_conns:
            self.states[game_id] = after
        self._broadcast(after, events[-1].type)
        await self.bus.flush(staged)
        ended = next((e for e in events if isinstance(e, GameEnded)), None)
        if ended is not None:
            await self._log_end(after, ended)
        return after

    async def _log_end(self, after: GameState, ended: GameEnded) -> None:
        """One log line per finished game: id, system, outcome, end reason, turns."""
        try:
            async with self.db.session() as s:
                system = (await s.execute(select(Game.system).where(Game.id == after.game_id))).scalar()
        except Exception:  # the line is informative only; never fail a committed game over it
            system = None
        log.info(
            "game %s ended: system %s, %s (%s), %d turns",
            after.game_id, system or after.listener_kind.value, ended.outcome.value,
            ended.reason.value, after.turn,
        )

    async def _speaker_draft(self, game_id: str) -> str:
        async with self.db.session() as s:
            draft = (await s.execute(select(Game.speaker_draft).where(Game.id == game_id))).scalar()
        return draft or ""

    async def _commit(self, before: GameState, events: list[Event], after: GameState, actor: str):
        message = {
            "k": "g",
            "id": after.game_id,
            "v": after.version,
            "e": [event_json(e) for e in events],
        }
        reactions = self._has_reactions(events, after)
        if self.db.dialect == "sqlite":
            committed = await self._commit_sqlite(before, events, after, actor, message, reactions)
            if committed is not None:
                return committed
        elif not reactions:
            staged = await self._commit_direct(before, events, after, actor, message)
            if staged is not None:
                return staged, None
        async with self.db.session() as s:
            async with s.begin():
                await append(s, before, events, after, actor)
                codes = await self._react(s, before, events, after)
                staged = [self.bus.stage_after_commit(message)]
                if any(isinstance(e, UtteranceSent) for e in events) and (
                    after.listener_kind is ListenerKind.MODEL
                ):
                    staged.append(await self.bus.stage(s, {"k": "r", "id": after.game_id}))
        if len(staged) > 1 and self.on_listener_request:
            self.on_listener_request()
        return staged, codes

    @staticmethod
    def _has_reactions(events: list[Event], after: GameState) -> bool:
        """Whether ``_react`` has anything to write for these events."""
        if any(isinstance(e, GameEnded) for e in events):
            return True
        return after.listener_kind is ListenerKind.MODEL and any(
            isinstance(e, UtteranceSent) for e in events
        )

    async def _commit_direct(
        self, before: GameState, events: list[Event], after: GameState, actor: str, message: dict
    ) -> list[dict] | None:
        """PostgreSQL's hot path, for events without lifecycle reactions (clicks, messages,
        submits that do not end the game): the same rows, as one statement on the database's
        asyncpg pool instead of an ORM session. None when it is not available."""
        if self.db.dialect != "postgresql":
            return None
        await append_asyncpg(self.db, AppendRows(before, events, after, actor))
        return [self.bus.stage_after_commit(message)]

    async def _commit_sqlite(
        self,
        before: GameState,
        events: list[Event],
        after: GameState,
        actor: str,
        message: dict,
        reactions: bool,
    ):
        """SQLite's commit, on the database's writer connection and without yielding to the
        event loop between its statements: SQLite has one write lock, and a transaction that
        awaits between statements holds it for whole loop iterations (tens of ms under load),
        which queued every other game's writes behind it. When another connection holds the
        lock, wait for it here with short sleeps. None when this is not available (no SQLite
        file, lock busy past ``SQLITE_LOCK_PATIENCE``, reactions that would need to await):
        then use a session."""
        db = self.db
        conn = db.sqlite_writer()
        if conn is None:
            return None
        rows = AppendRows(before, events, after, actor)
        delay, waited = 0.0005, 0.0
        while True:
            try:
                if not reactions:
                    if append_sqlite(conn, rows):
                        db.sqlite_committed()
                        return [self.bus.stage_after_commit(message)], None
                else:
                    committed = self._commit_sqlite_reactions(conn, rows, before, events, after, message)
                    if committed is not None:
                        db.sqlite_committed()
                        return committed
            except _WouldSuspend:
                return None
            if waited > SQLITE_LOCK_PATIENCE:
                self.stats["sqlite_busy"] = self.stats.get("sqlite_busy", 0) + 1
                return None
            self.stats["sqlite_waits"] = self.stats.get("sqlite_waits", 0) + 1
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 0.02)

    def _commit_sqlite_reactions(self, conn, rows, before, events, after, message):
        """Events and their lifecycle reactions in one synchronous ORM session (see
        ``_commit_sqlite``); None, having written nothing, when the write lock is taken."""
        try:
            conn.execute("BEGIN IMMEDIATE")  # cheap to try; the session joins this transaction
        except sqlite3.OperationalError:
            return None
        try:
            with self.db.sqlite_session() as session:
                append_sqlite_in_transaction(conn, rows)
                shim = _SyncSession(session)
                codes = _run_now(self._react(shim, before, events, after))
                staged = [self.bus.stage_after_commit(message)]
                if any(isinstance(e, UtteranceSent) for e in events) and (
                    after.listener_kind is ListenerKind.MODEL
                ):
                    staged.append(_run_now(self.bus.stage(shim, {"k": "r", "id": after.game_id})))
                session.commit()
            if conn.in_transaction:  # the session had nothing to do: commit the events
                conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if len(staged) > 1 and self.on_listener_request:
            self.on_listener_request()
        return staged, codes

    async def _react(self, s, before: GameState, events: list[Event], after: GameState):
        """Lifecycle reactions committed with the events: pay on end, model-turn requests.

        Keep ``_has_reactions`` in step: events it says have none skip this (and the session)."""
        codes = None
        if any(isinstance(e, GameEnded) for e in events):
            codes = await settle_game(s, after)
            if after.listener_kind is ListenerKind.MODEL:
                await s.execute(
                    ListenerRequest.__table__.update()
                    .where(
                        ListenerRequest.game_id == after.game_id,
                        ListenerRequest.status.in_(("pending", "claimed")),
                    )
                    .values(status="cancelled")
                )
        elif after.listener_kind is ListenerKind.MODEL:
            for e in events:
                if isinstance(e, UtteranceSent):
                    game = await s.get(Game, after.game_id)
                    s.add(
                        ListenerRequest(
                            game_id=after.game_id,
                            turn=e.turn,
                            system=game.system or "model",
                            checkpoint=game.checkpoint,
                            status="pending",
                            created_at=e.at,
                            deadline=after.phase_deadline or e.at,
                        )
                    )
        return codes

    # ------------------------------------------------------------ fan-out

    async def on_bus(self, message: dict) -> None:
        kind = message.get("k")
        if kind == "g":
            await self._on_game_message(message)
        elif kind == "p":
            for conn in list(self.participant_conns.get(message.get("id", ""), ())):
                if conn.on_participant_change:
                    await conn.on_participant_change()
        elif kind == "r" and self.on_listener_request:
            self.on_listener_request()

    async def _on_game_message(self, message: dict) -> None:
        game_id = message.get("id", "")
        if game_id not in self.game_conns:
            return
        cached = self.states.get(game_id)
        if cached is not None and cached.version >= int(message.get("v", 0)):
            return  # our own write, or already caught up (checked again under the lock below)
        async with self.locks[game_id]:
            state = self.states.get(game_id)
            version = int(message.get("v", 0))
            if state is not None and state.version >= version:
                return  # our own write, or already caught up
            events = message.get("e")
            if state is not None and events and state.version == version - len(events):
                for data in events:
                    state = evolve(state, event_from_dict(data))
            else:
                self.states.pop(game_id, None)
                state = await self.state(game_id)
            if state is None:
                return
            self.states[game_id] = state
            cause = events[-1]["type"] if events else None
        if state.ended and game_id not in self.codes:
            await self._load_codes(game_id)
        self._broadcast(state, cause)

    async def catch_up(self) -> None:
        """After a bus outage: reload every cached game and resend its view."""
        for game_id in list(self.game_conns):
            async with self.locks[game_id]:
                self.states.pop(game_id, None)
                state = await self.state(game_id)
            if state is not None:
                if state.ended:
                    await self._load_codes(game_id)
                self._broadcast(state, None)

    async def _load_codes(self, game_id: str) -> None:
        async with self.db.session() as s:
            rows = await s.execute(
                select(Participant.seat, Participant.completion_code).where(
                    Participant.game_id == game_id
                )
            )
            self.codes[game_id] = {Seat(seat): code for seat, code in rows if seat and code}

    def view_frame(self, state: GameState, seat: Seat, cause: str | None) -> StateFrame:
        pay = game_pay(state) if state.ended else None
        code = self.codes.get(state.game_id, {}).get(seat) if state.ended else None
        return StateFrame(
            view=GameView.of(
                state, seat, self.clock(), cause=cause, pay=pay, completion_code=code,
                redirect_url=completion_redirect(self.prolific_code, code),
            )
        )

    async def _send_if_behind(self, state: GameState) -> None:
        """Send ``state`` to the local sockets that have not seen it (after a reload)."""
        conns = self.game_conns.get(state.game_id, ())
        if not any(c.view_version < state.version for c in conns):
            return
        if state.ended and state.game_id not in self.codes:
            await self._load_codes(state.game_id)
        self._broadcast(state, None, behind_only=True)

    def _broadcast(self, state: GameState, cause: str | None, behind_only: bool = False) -> None:
        conns = self.game_conns.get(state.game_id)
        if not conns:
            return
        payloads: dict[Seat, str] = {}
        for conn in list(conns):
            if conn.seat is None or (behind_only and conn.view_version >= state.version):
                continue
            if conn.seat not in payloads:
                payloads[conn.seat] = self.view_frame(state, conn.seat, cause).model_dump_json()
            conn.send(payloads[conn.seat])
            conn.view_version = max(conn.view_version, state.version)

    def send_view(self, conn: Connection, state: GameState, seat: Seat, cause: str | None = None) -> None:
        """Send one connection the view of ``state`` (a join that changed nothing, a refresh)."""
        conn.send_frame(self.view_frame(state, seat, cause))
        conn.view_version = max(conn.view_version, state.version)

    def forget_idle(self) -> int:
        """Drop per-game entries of games nobody here is connected to (games ticked by the
        sweeper or ended by a worker leave a lock and codes behind); returns how many."""
        idle = [
            g for g, lock in self.locks.items()
            if g not in self.game_conns and not lock.locked() and not getattr(lock, "_waiters", None)
        ]
        for g in idle:
            del self.locks[g]
        stale_codes = [g for g in self.codes if g not in self.game_conns]
        for g in stale_codes:
            del self.codes[g]
        return len(idle) + len(stale_codes)

    async def update_draft(self, game_id: str, seat: Seat, text: str) -> None:
        """Keep the speaker's unsent text, auto-sent when the typing window closes."""
        if seat is not Seat.SPEAKER:
            return
        async with self.db.session() as s, s.begin():
            await s.execute(
                Game.__table__.update()
                .where(Game.id == game_id, Game.status == "live", Game.phase == "speaking")
                .values(speaker_draft=text[:2000])
            )

    # ------------------------------------------------------------ connections

    async def attach(self, conn: Connection, game_id: str, seat: Seat) -> None:
        """Seat a connection in its game (a first join, a reload or a reconnect)."""
        conn.game_id, conn.seat = game_id, seat
        self.game_conns[game_id].add(conn)
        state, result = await self.execute(game_id, Join(seat=seat, at=self.clock()), actor=seat.value)
        if state is None:
            conn.send_frame(ErrorFrame(code="unknown_game", message="There is no such game."))
            return
        if state.ended and game_id not in self.codes:
            await self._load_codes(game_id)
        if isinstance(result, Rejection) or not result:  # nothing changed: send the view anyway
            self.send_view(conn, state, seat)

    async def detach(self, conn: Connection) -> None:
        if conn.participant_id:
            self.participant_conns[conn.participant_id].discard(conn)
            if not self.participant_conns[conn.participant_id]:
                del self.participant_conns[conn.participant_id]
        game_id, seat = conn.game_id, conn.seat
        if game_id is None or seat is None:
            return
        conns = self.game_conns.get(game_id, set())
        conns.discard(conn)
        if not any(c.seat is seat for c in conns):
            await self.execute(game_id, Disconnect(seat=seat, at=self.clock()), actor=seat.value)
        if not conns:
            self.game_conns.pop(game_id, None)
            self.states.pop(game_id, None)
            self.locks.pop(game_id, None)
            self.codes.pop(game_id, None)
