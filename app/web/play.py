"""The players' websocket, ``/ws``: one connection per browser tab or bot.

The first frame is ``hello`` with the participant token. From then on the connection follows
its participant: in the lobby it gets lobby frames, once paired it is seated in its game and
gets the game view after every change; a reload or a reconnect sends ``hello`` again and
resumes the same seat. Bad frames get an error frame and change nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from app.db.models import Participant
from app.game import rules
from app.game.rules import Seat
from app.live.hub import Connection
from app.live.participants import Status, completion_redirect, pay_of
from app.protocol import (
    CLIENT_FRAME,
    ClickFrame,
    DraftFrame,
    ErrorFrame,
    HelloFrame,
    LeaveFrame,
    LobbyFrame,
    PayView,
    PingFrame,
    PongFrame,
    ReleasedFrame,
    SubmitFrame,
    UtteranceFrame,
    WelcomeFrame,
)

log = logging.getLogger("multiref.play")
router = APIRouter()

HELLO_TIMEOUT = 15.0
RELEASE_MESSAGES = {
    "lobby_timeout": "No partner became available in time. You are paid for your waiting time.",
}


class RateLimit:
    """Token bucket per connection: ``rate`` frames per second, bursts of twice that."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, 2 * rate)
        self.tokens = self.capacity
        self.last = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class PlayerSession:
    """What one connection does for its participant; the glue between socket, lobby and hub."""

    def __init__(self, ws: WebSocket, services) -> None:
        self.ws = ws
        self.services = services
        self.hub = services.hub
        address = ws.client.host if ws.client else ""
        self.conn = Connection(ws.send_text, address)
        self.conn.on_participant_change = self.refresh
        self.participant_id: str | None = None

    def release(self) -> None:
        """Break the session <-> connection cycle (the connection's callback is this session's
        method) once the socket is done, so that both, with their queue, events and the
        websocket, are freed when the handler returns instead of waiting, promoted, for a full
        garbage collection: those come about every 4 s at 500 games and each scans every live
        object (bench/README.md, issue 14 third and fifth passes)."""
        self.conn.on_participant_change = None

    def error(self, code: str, message: str, version: int | None = None) -> None:
        self.conn.send_frame(ErrorFrame(code=code, message=message, version=version))

    async def hello(self, frame: HelloFrame) -> bool:
        pid = self.services.tokens.verify(frame.token)
        if pid is None:
            self.error("bad_token", "This link is not valid. Please open the study link again.")
            return False
        if self.participant_id is not None and pid != self.participant_id:
            self.error("bad_token", "This connection already belongs to another participant.")
            return False
        cap = self.services.settings.max_sockets_per_participant
        if self.participant_id is None and cap and len(self.hub.participant_conns.get(pid, ())) >= cap:
            self.error("too_many_connections", "Too many open tabs for this seat; close some and reload.")
            return False
        self.participant_id = pid
        self.conn.participant_id = pid
        self.hub.participant_conns[pid].add(self.conn)
        return await self.refresh(first=True)

    async def _participant(self):
        """The participant's row (attributes named as ``Participant``'s), or None."""
        db = self.services.db
        rows = await db.fetch("SELECT * FROM participants WHERE id = $1", self.participant_id)
        if rows is None:  # no direct read: through a session
            async with db.session() as s:
                return await s.get(Participant, self.participant_id)
        return SimpleNamespace(**{k: rows[0][k] for k in rows[0].keys()}) if rows else None

    async def refresh(self, first: bool = False) -> bool:
        """Bring this connection in line with its participant's status in the database."""
        p = await self._participant()
        if p is None:
            self.error("bad_token", "Unknown participant.")
            return False
        if first:
            self.conn.send_frame(WelcomeFrame(participant_id=p.id, status=p.status))
        if p.status == Status.ARRIVED:
            self.error("consent_required", "Please accept the consent form first.")
        elif p.status == Status.CONSENTED and self.services.settings.require_quiz and p.quiz_passed_at is None:
            self.error("quiz_required", "Please answer the short quiz about the game first.")
        elif p.status in (Status.CONSENTED, Status.WAITING):
            if p.status == Status.CONSENTED:
                await self.services.lobby.enter(p.id)
                p = await self._participant()
            if p.status == Status.WAITING:
                policy = self.services.lobby.policy
                self.conn.send_frame(
                    LobbyFrame(
                        waiting_seconds=max(0.0, time.time() - (p.waiting_since or time.time())),
                        timeout_seconds=policy.timeout_seconds,
                        on_timeout=policy.fallback,
                        waiting_players=await self.services.lobby.waiting_count(),
                    )
                )
        if p.status in (Status.IN_GAME, Status.COMPLETED, Status.FORFEITED) and p.game_id:
            if self.conn.game_id != p.game_id:
                await self.hub.attach(self.conn, p.game_id, Seat(p.seat))
            elif not first:
                state = await self.hub.state(p.game_id)
                # a view this socket has already been sent would arrive twice
                if state is not None and state.version > self.conn.view_version:
                    self.hub.send_view(self.conn, state, Seat(p.seat))
        elif p.status == Status.RELEASED:
            self.conn.send_frame(
                ReleasedFrame(
                    reason=p.released_reason or "released",
                    message=RELEASE_MESSAGES.get(p.released_reason or "", "You have been released."),
                    completion_code=p.completion_code or "",
                    pay=PayView.of(pay_of(p)),
                    redirect_url=completion_redirect(
                        self.services.settings.prolific_completion_code, p.completion_code
                    ),
                )
            )
        return True

    async def handle(self, frame) -> None:
        hub = self.hub
        conn = self.conn
        if isinstance(frame, PingFrame):
            conn.send_frame(PongFrame(nonce=frame.nonce, server_time=time.time()))
            return
        if isinstance(frame, HelloFrame):
            await self.hello(frame)
            return
        if conn.game_id is None or conn.seat is None:
            self.error("not_in_game", "You are not in a game yet.")
            return
        now = hub.clock()
        seat = conn.seat
        version: int | None = None
        if isinstance(frame, DraftFrame):
            await hub.update_draft(conn.game_id, seat, frame.text)
            return
        if isinstance(frame, UtteranceFrame):
            cmd, version = rules.SendUtterance(seat=seat, text=frame.text, at=now), frame.version
        elif isinstance(frame, ClickFrame):
            cmd, version = rules.Click(seat=seat, tangram_id=frame.tangram_id, at=now), frame.version
        elif isinstance(frame, SubmitFrame):
            cmd, version = rules.Submit(seat=seat, at=now), frame.version
        elif isinstance(frame, LeaveFrame):
            cmd = rules.Leave(seat=seat, at=now)
        else:  # pragma: no cover - the protocol union is exhaustive
            self.error("unknown_type", "Unknown frame type.")
            return
        state, result = await hub.execute(conn.game_id, cmd, version=version, actor=seat.value)
        if isinstance(result, rules.Rejection):
            self.error(result.code, result.message, state.version if state else None)


@router.websocket("/ws")
async def play(ws: WebSocket) -> None:
    services = ws.app.state.services
    settings = services.settings
    address = ws.client.host if ws.client else ""
    if not services.connections.acquire(address):
        await ws.accept()
        await ws.send_text(
            ErrorFrame(code="too_many_connections", message="Too many connections from your address.").model_dump_json()
        )
        await ws.close(code=1008)
        return
    await ws.accept()
    session = PlayerSession(ws, services)
    limit = RateLimit(settings.max_messages_per_second)
    refused = False
    try:
        try:
            first = await asyncio.wait_for(_receive_text(session), timeout=HELLO_TIMEOUT)
        except TimeoutError:
            first = None
        frame = _parse(session, first, settings.max_frame_bytes) if first is not None else None
        if not isinstance(frame, HelloFrame):
            session.error("hello_required", "Send a hello frame with your token first.")
            refused = True
            return
        if not await session.hello(frame):
            refused = True
            return
        while not session.conn.closed.is_set():
            raw = await _receive_text(session)
            if not limit.allow():
                session.error("rate_limited", "Too many messages; slow down.")
                continue
            frame = _parse(session, raw, settings.max_frame_bytes) if raw is not None else None
            if frame is not None:
                await session.handle(frame)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        services.connections.release(address)
        await services.hub.detach(session.conn)
        pid = session.participant_id
        if pid and session.conn.game_id is None and pid not in services.hub.participant_conns:
            await services.lobby.leave(pid)  # nobody is waiting behind this socket any more
        await session.conn.close()  # lets queued frames (errors, the last view) go out first
        session.release()
        if refused:
            try:
                await ws.close(code=1008)
            except RuntimeError:
                pass


async def _receive_text(session: PlayerSession) -> str | None:
    """The next text frame; a binary frame gets an error frame and None."""
    message = await session.ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    if message.get("text") is not None:
        return message["text"]
    session.error("binary_frame", "Frames must be JSON text.")
    return None


def _parse(session: PlayerSession, raw: str, max_bytes: int):
    if len(raw) > max_bytes:
        session.error("frame_too_large", f"Frames are limited to {max_bytes} bytes.")
        return None
    try:
        return CLIENT_FRAME.validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            session.error("malformed", "The message is not valid JSON.")
        elif first.get("type") in ("union_tag_invalid", "union_tag_not_found"):
            session.error("unknown_type", "Unknown or missing frame type.")
        elif first.get("type") == "string_too_long" and "text" in first.get("loc", ()):
            session.error("utterance_too_long", "Messages are limited to 500 characters.")
        else:
            loc = ".".join(str(x) for x in first.get("loc", ()))
            session.error("invalid_frame", f"Invalid frame: {loc} {first.get('msg', '')}".strip())
        return None
