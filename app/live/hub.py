"""The live driver of games: runs commands through the rules engine, commits, then broadcasts.

The database is the truth; this process only caches the state of games that have a player
connected here. A command is decided against the cached state; its events, with the lifecycle
reactions they call for (``app.live.reactions``: pay, model turns), go to the event store
(``app.live.store``) as one batch, appended with optimistic concurrency: if another process
wrote first, the cache is reloaded and the command decided again, so nothing is applied twice. Every committed change is sent on
the bus, which is how players connected to different processes see each other.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

from sqlalchemy import select

from app.db.database import Database
from app.db.gamelog import Conflict, event_json
from app.db.models import Game, Participant
from app.game.rules import (
    Command,
    Event,
    GameEnded,
    GameState,
    Join,
    Disconnect,
    Rejection,
    Seat,
    Tick,
    decide,
    evolve,
    event_from_dict,
    game_pay,
    replay,
)
from app.live.bus import Bus
from app.live.participants import completion_redirect
from app.live.reactions import react
from app.live.store import Batch, event_store
from app.protocol import ErrorFrame, state_frame_json

log = logging.getLogger("multiref.hub")

Clock = Callable[[], float]


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
        self.store = event_store(db, bus)
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
        events = await self.store.load_events(game_id, state.version if state else 0)
        if state is None:
            state = replay(events) if events else None
        else:
            for e in events:
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
        if not log.isEnabledFor(logging.INFO):
            return  # the read below is for this line only
        try:
            rows = await self.db.fetch("SELECT system FROM games WHERE id = $1", after.game_id)
            if rows is None:  # no direct read right now: through a session
                async with self.db.session() as s:
                    system = (await s.execute(select(Game.system).where(Game.id == after.game_id))).scalar()
            else:
                system = rows[0][0] if rows else None
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
        """Hand the store one batch: the events, their derived rows and their reactions."""
        data = [event_json(e) for e in events]
        message = {"k": "g", "id": after.game_id, "v": after.version, "e": data}
        reactions = react(before, events, after)
        committed = await self.store.commit(Batch(before, events, after, actor, reactions, message))
        if reactions.wake_listeners and self.on_listener_request:
            self.on_listener_request()
        return committed.staged, committed.codes

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

    def view_json(self, state: GameState, seat: Seat, cause: str | None) -> str:
        """The state frame of ``seat`` (``StateFrame`` of ``GameView.of``, built as plain data)."""
        pay = game_pay(state) if state.ended else None
        code = self.codes.get(state.game_id, {}).get(seat) if state.ended else None
        return state_frame_json(
            state, seat, self.clock(), cause=cause, pay=pay, completion_code=code,
            redirect_url=completion_redirect(self.prolific_code, code),
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
                payloads[conn.seat] = self.view_json(state, conn.seat, cause)
            conn.send(payloads[conn.seat])
            conn.view_version = max(conn.view_version, state.version)

    def send_view(self, conn: Connection, state: GameState, seat: Seat, cause: str | None = None) -> None:
        """Send one connection the view of ``state`` (a join that changed nothing, a refresh)."""
        conn.send(self.view_json(state, seat, cause))
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
