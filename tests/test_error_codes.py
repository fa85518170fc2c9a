"""Every error code of the protocol, triggered over a real websocket against a real server.

One table: each row is a code, the way to provoke it, and what must be true after it (the error
frame's code and, where it matters, that nothing changed). The list of codes is
``app.protocol.ERROR_CODES``; the table must cover exactly that list, and the list must be
exactly the codes the server's source can send, so a code no path produces is removed from it
and a new code cannot be added without a row here.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import websockets

from app.bot import create_game, join, ws_url
from app.game.rules import GameConfig
from app.protocol import ERROR_CODES
from app.web.auth import ParticipantTokens
from tests.conftest import ADMIN_TOKEN, ROOT, ServerProcess

SECRET = "error-codes-secret-" + "x" * 20
MAX_CONNECTIONS = 12
RULES_MAX_CHARS = 100  # the games' own bound, below the protocol's 500
HTTP_ONLY_CODES = {"invalid_end_reason"}  # a rules refusal only the admin API can reach (409)


@pytest.fixture(scope="module")
def server(tmp_path_factory, kilogram_dir) -> ServerProcess:
    tmp = tmp_path_factory.mktemp("error-codes")
    proc = ServerProcess(
        f"sqlite+aiosqlite:///{tmp / 'multiref.sqlite3'}", kilogram_dir, tmp,
        MULTIREF_SECRET_KEY=SECRET,
        MULTIREF_MAX_CONNECTIONS_PER_ADDRESS=str(MAX_CONNECTIONS),
        MULTIREF_RULES__MAX_UTTERANCE_CHARS=str(RULES_MAX_CHARS),
    ).start()
    yield proc
    proc.stop()


class Socket:
    """A raw websocket speaking JSON frames (and whatever a test wants to send)."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.frames: list[dict] = []

    @classmethod
    async def open(cls, server: ServerProcess, token: str | None = None) -> "Socket":
        sock = cls(await websockets.connect(ws_url(server.url), max_size=2**20, open_timeout=10))
        if token is not None:
            await sock.send({"type": "hello", "token": token})
        return sock

    async def send(self, frame: dict | str | bytes) -> None:
        await self.ws.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))

    async def until(self, predicate, timeout: float = 10.0) -> dict:
        for f in self.frames:
            if predicate(f):
                return f
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching frame in {self.frames}")
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), left))
            self.frames.append(frame)
            if predicate(frame):
                return frame

    def _taken(self) -> set[int]:
        if not hasattr(self, "_taken_ids"):
            self._taken_ids: set[int] = set()
        return self._taken_ids

    async def next_error(self, timeout: float = 10.0) -> dict:
        """The first error frame not returned before."""
        frame = await self.until(lambda f: f.get("type") == "error" and id(f) not in self._taken(), timeout)
        self._taken().add(id(frame))
        return frame

    async def view(self, predicate=lambda v: True, timeout: float = 10.0) -> dict:
        frame = await self.until(lambda f: f.get("type") == "state" and predicate(f["view"]), timeout)
        return frame["view"]

    def latest_view(self) -> dict:
        return [f for f in self.frames if f.get("type") == "state"][-1]["view"]

    async def close(self) -> None:
        await self.ws.close()


def config(kilogram_dir: Path) -> GameConfig:
    ids = sorted(p.stem for p in kilogram_dir.glob("*.svg"))[:10]
    return GameConfig(context=tuple(ids), targets=tuple(ids[:3]), speaker_order=tuple(ids),
                      listener_order=tuple(reversed(ids)))


@dataclass
class Game:
    id: str
    config: GameConfig
    speaker: Socket
    listener: Socket

    async def close(self) -> None:
        await self.speaker.close()
        await self.listener.close()


async def started_game(server: ServerProcess, kilogram_dir: Path) -> Game:
    cfg = config(kilogram_dir)
    created = await create_game(server.url, ADMIN_TOKEN, cfg)
    speaker = await Socket.open(server, created["speaker_token"])
    listener = await Socket.open(server, created["listener_token"])
    await speaker.view(lambda v: v["phase"] == "speaking")
    await listener.view(lambda v: v["phase"] == "speaking")
    return Game(created["game_id"], cfg, speaker, listener)


def db_file(server: ServerProcess) -> str:
    return server.database_url.split("///", 1)[1]


def sql(server: ServerProcess, statement: str, *params) -> None:
    conn = sqlite3.connect(db_file(server), timeout=10)
    try:
        with conn:
            conn.execute(statement, params)
    finally:
        conn.close()


def event_count(server: ServerProcess, game_id: str) -> int:
    conn = sqlite3.connect(db_file(server), timeout=10)
    try:
        return conn.execute("SELECT count(*) FROM game_events WHERE game_id = ?", (game_id,)).fetchone()[0]
    finally:
        conn.close()


# ---------------------------------------------------------------- the rows

Trigger = Callable[[ServerProcess, Path], Awaitable[dict]]  # returns the error frame


async def _hello_then(server, frame, token: str | None = None) -> dict:
    sock = await Socket.open(server, token or await join(server.url))
    await sock.until(lambda f: f.get("type") in ("lobby", "state"))
    await sock.send(frame)
    err = await sock.next_error()
    await sock.close()
    return err


async def too_many_connections(server, _):
    socks, refused = [], None
    try:
        for _ in range(MAX_CONNECTIONS + 2):
            sock = await Socket.open(server)
            socks.append(sock)
            try:
                refused = await sock.until(lambda f: f.get("type") == "error", timeout=0.5)
                break
            except (AssertionError, TimeoutError):
                continue
        assert refused is not None and len(socks) <= MAX_CONNECTIONS + 1
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(socks[-1].ws.recv(), 5)
        assert closed.value.rcvd.code == 1008  # and the refused socket is closed
        return refused
    finally:
        for s in socks:
            await s.close()
        await asyncio.sleep(0.3)  # the server gives the places back


async def hello_required(server, _):
    sock = await Socket.open(server)
    await sock.send({"type": "ping", "nonce": "first"})
    err = await sock.next_error()
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(sock.ws.recv(), 5)
    return err


async def bad_token_forged(server, _):
    sock = await Socket.open(server, "forged.token")
    err = await sock.next_error()
    await sock.close()
    return err


async def bad_token_unknown_participant(server, _):
    """A correctly signed token for a participant the database does not have."""
    sock = await Socket.open(server, ParticipantTokens(SECRET).issue(uuid.uuid4().hex))
    err = await sock.next_error()
    assert err["message"] == "Unknown participant."
    await sock.close()
    return err


async def bad_token_second_participant(server, _):
    sock = await Socket.open(server, await join(server.url))
    await sock.until(lambda f: f.get("type") == "lobby")
    await sock.send({"type": "hello", "token": await join(server.url)})
    err = await sock.next_error()
    assert "another participant" in err["message"]
    await sock.close()
    return err


async def consent_required(server, _):
    sock = await Socket.open(server, await join(server.url, consent=False))
    err = await sock.next_error()
    assert not any(f.get("type") == "lobby" for f in sock.frames)  # not queued for a partner
    await sock.close()
    return err


async def quiz_required(server, _):
    sock = await Socket.open(server, await join(server.url, quiz=False))
    err = await sock.next_error()
    assert not any(f.get("type") == "lobby" for f in sock.frames)
    await sock.close()
    return err


async def binary_frame(server, _):
    return await _hello_then(server, b"\x00\x01binary")


async def frame_too_large(server, _):
    return await _hello_then(server, json.dumps({"type": "ping", "nonce": "x" * 9000}))


async def malformed(server, _):
    return await _hello_then(server, "{not json")


async def unknown_type(server, _):
    return await _hello_then(server, {"type": "teleport"})


async def invalid_frame(server, _):
    return await _hello_then(server, {"type": "click"})


async def utterance_too_long_protocol(server, _):
    return await _hello_then(server, {"type": "send_utterance", "version": 1, "text": "a" * 501})


async def rate_limited(server, _):
    sock = await Socket.open(server, await join(server.url))
    await sock.until(lambda f: f.get("type") == "lobby")
    for i in range(120):  # a burst of 40 is allowed at 20 frames a second
        await sock.send({"type": "ping", "nonce": str(i)})
    err = await sock.next_error()
    await sock.close()
    return err


async def not_in_game(server, _):
    sock = await Socket.open(server, await join(server.url))
    await sock.until(lambda f: f.get("type") == "lobby")  # waiting for a partner, no seat yet
    await sock.send({"type": "click", "version": 1, "tangram_id": "anything"})
    err = await sock.next_error()
    await sock.close()
    return err


async def unknown_game(server, _):
    """A participant seated in a game the database does not have."""
    token = await join(server.url)
    pid = ParticipantTokens(SECRET).verify(token)
    sql(server, "UPDATE participants SET status = 'in_game', game_id = ?, seat = 'speaker' WHERE id = ?",
        "f" * 32, pid)
    sock = await Socket.open(server, token)
    err = await sock.next_error()
    await sock.close()
    return err


async def _game_action(server, kilogram_dir, act) -> dict:
    """Run ``act(game)`` on a fresh game; it returns the error; nothing may have changed."""
    game = await started_game(server, kilogram_dir)
    try:
        before = event_count(server, game.id)
        err = await act(game)
        await asyncio.sleep(0.2)
        assert event_count(server, game.id) == before, "a refused action changed the game"
        return err
    finally:
        await game.close()


async def stale_version(server, kilogram_dir):
    async def act(g: Game):
        version = g.speaker.latest_view()["version"]
        await g.speaker.send({"type": "send_utterance", "version": version - 1, "text": "hi"})
        err = await g.speaker.next_error()
        assert err["version"] == version  # the current version, to retry with
        return err
    return await _game_action(server, kilogram_dir, act)


async def busy(server, kilogram_dir):
    """Another writer that always wins: the game row's version is moved past the event log, so
    every append the hub tries conflicts; after six tries it gives up with ``busy``."""
    async def act(g: Game):
        sql(server, "UPDATE games SET version = version + 1000 WHERE id = ?", g.id)
        version = g.speaker.latest_view()["version"]
        await g.speaker.send({"type": "send_utterance", "version": version, "text": "hi"})
        return await g.speaker.next_error()
    return await _game_action(server, kilogram_dir, act)


async def not_your_seat(server, kilogram_dir):
    async def act(g: Game):
        version = g.speaker.latest_view()["version"]
        await g.speaker.send({"type": "click", "version": version, "tangram_id": g.config.context[0]})
        return await g.speaker.next_error()
    return await _game_action(server, kilogram_dir, act)


async def not_your_turn(server, kilogram_dir):
    async def act(g: Game):
        version = g.listener.latest_view()["version"]
        await g.listener.send({"type": "submit", "version": version})
        return await g.listener.next_error()
    return await _game_action(server, kilogram_dir, act)


async def empty_utterance(server, kilogram_dir):
    async def act(g: Game):
        version = g.speaker.latest_view()["version"]
        await g.speaker.send({"type": "send_utterance", "version": version, "text": " \t\n "})
        return await g.speaker.next_error()
    return await _game_action(server, kilogram_dir, act)


async def utterance_too_long_rules(server, kilogram_dir):
    async def act(g: Game):
        version = g.speaker.latest_view()["version"]
        await g.speaker.send({"type": "send_utterance", "version": version, "text": "b" * (RULES_MAX_CHARS + 1)})
        err = await g.speaker.next_error()
        assert f"limited to {RULES_MAX_CHARS} characters" in err["message"]
        return err
    return await _game_action(server, kilogram_dir, act)


async def unknown_tangram(server, kilogram_dir):
    game = await started_game(server, kilogram_dir)
    try:
        version = game.speaker.latest_view()["version"]
        await game.speaker.send({"type": "send_utterance", "version": version, "text": "the bird"})
        view = await game.listener.view(lambda v: v["phase"] == "selecting")
        before = event_count(server, game.id)
        await game.listener.send({"type": "click", "version": view["version"], "tangram_id": "not-in-this-game"})
        err = await game.listener.next_error()
        await asyncio.sleep(0.2)
        assert event_count(server, game.id) == before
        return err
    finally:
        await game.close()


async def game_ended(server, kilogram_dir):
    game = await started_game(server, kilogram_dir)
    try:
        await game.listener.send({"type": "leave"})
        view = await game.speaker.view(lambda v: v["phase"] == "ended")
        before = event_count(server, game.id)
        await game.speaker.send({"type": "send_utterance", "version": view["version"], "text": "still there?"})
        err = await game.speaker.next_error()
        assert event_count(server, game.id) == before
        return err
    finally:
        await game.close()


ROWS: list[tuple[str, Trigger]] = [
    ("too_many_connections", too_many_connections),
    ("hello_required", hello_required),
    ("bad_token", bad_token_forged),
    ("bad_token", bad_token_unknown_participant),
    ("bad_token", bad_token_second_participant),
    ("consent_required", consent_required),
    ("quiz_required", quiz_required),
    ("binary_frame", binary_frame),
    ("frame_too_large", frame_too_large),
    ("malformed", malformed),
    ("unknown_type", unknown_type),
    ("invalid_frame", invalid_frame),
    ("utterance_too_long", utterance_too_long_protocol),
    ("utterance_too_long", utterance_too_long_rules),
    ("rate_limited", rate_limited),
    ("not_in_game", not_in_game),
    ("unknown_game", unknown_game),
    ("stale_version", stale_version),
    ("busy", busy),
    ("game_ended", game_ended),
    ("not_your_seat", not_your_seat),
    ("not_your_turn", not_your_turn),
    ("empty_utterance", empty_utterance),
    ("unknown_tangram", unknown_tangram),
]


async def test_every_error_code_is_triggered_over_a_real_socket(server, kilogram_dir):
    # hello timeout: a socket that never says hello gets hello_required once the server's hello
    # window (15 s) has passed, then is closed. It waits while the other rows run.
    silent = await Socket.open(server)
    opened = time.monotonic()
    got: dict[str, str] = {}
    failures = []
    for code, trigger in ROWS:
        try:
            frame = await trigger(server, kilogram_dir)
            assert frame["type"] == "error" and frame["message"], frame
            got[trigger.__name__] = frame["code"]
            if frame["code"] != code:
                failures.append(f"{trigger.__name__}: expected {code}, got {frame}")
        except Exception as exc:  # report every row, not only the first that fails
            failures.append(f"{trigger.__name__}: {type(exc).__name__}: {exc}")
    timed_out = await silent.next_error(timeout=25)
    waited = time.monotonic() - opened
    assert timed_out["code"] == "hello_required" and waited >= 14, (timed_out, waited)
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(silent.ws.recv(), 5)
    assert not failures, "\n".join(failures)
    assert set(got.values()) == set(ERROR_CODES)


def test_the_table_covers_exactly_the_codes_the_server_can_send():
    """``ERROR_CODES`` == the codes written in the server's source (error frames, rejections):
    a code in the list that no path sends is dead, a code sent that is not listed is a crash."""
    sources = ["app/web/play.py", "app/live/hub.py", "app/game/rules.py"]
    written: set[str] = set()
    for path in sources:
        text = (ROOT / path).read_text()
        written |= set(re.findall(r'(?:Rejection\(|error\(|code=)\s*"([a-z_]+)"', text))
    assert written - HTTP_ONLY_CODES == set(ERROR_CODES)
    assert {code for code, _ in ROWS} == set(ERROR_CODES)
