"""Bot players that speak the real protocol over a real websocket.

Used by tests, the replay of recorded games, the load benchmark and the soak test. A bot keeps
the latest view the server sent and makes each action against that view's version, exactly as
the browser client does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import websockets

from app.game.rules import GameConfig
from app.protocol import (
    SERVER_FRAME,
    ClickFrame,
    ErrorFrame,
    GameView,
    HelloFrame,
    LeaveFrame,
    LobbyFrame,
    ReleasedFrame,
    StateFrame,
    SubmitFrame,
    UtteranceFrame,
    WelcomeFrame,
)
from app.quiz import answer_key

log = logging.getLogger("multiref.bot")


class BotError(RuntimeError):
    pass


class ActionRejected(BotError):
    """The server answered an action with an error frame (``code`` says why; ``version`` is
    the server's current version, sent with stale actions)."""

    def __init__(self, message: str, code: str, version: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.version = version


# With ``reconnect=True`` these rejections are races with a drop or with the partner, not bugs:
# the action may have been applied before the connection broke, or the game moved on meanwhile.
RACE_CODES = frozenset({"stale_version", "not_your_turn", "game_ended", "busy", "rate_limited"})
# Errors after which reopening the connection cannot help.
FATAL_CODES = frozenset({"bad_token"})


def ws_url(base_url: str) -> str:
    return re.sub(r"^http", "ws", base_url.rstrip("/")) + "/ws"


async def join(base_url: str, params: dict[str, str] | None = None, consent: bool = True, quiz: bool = True) -> str:
    """Arrive through the study-link API, consent and pass the quiz, as the entry page does;
    returns the participant token."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        r = await client.post("/api/join", json={"params": params or {}})
        if r.status_code != 200:
            raise BotError(f"join refused: {r.status_code} {r.text}")
        token = r.json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        if consent:
            r = await client.post("/api/consent", headers=auth)
            r.raise_for_status()
            if quiz:
                r = await client.post("/api/quiz", headers=auth, json={"answers": answer_key()})
                r.raise_for_status()
    return token


@dataclass
class BotClient:
    """A player over one websocket. With ``reconnect=True`` a dropped connection (server killed,
    network cut, database restarting) is reopened with backoff and ``hello`` is sent again with
    the same token, which resumes the same seat; actions wait for the fresh view first."""

    base_url: str
    token: str
    view: GameView | None = None
    lobby: LobbyFrame | None = None
    released: ReleasedFrame | None = None
    welcome: WelcomeFrame | None = None
    errors: list[ErrorFrame] = field(default_factory=list)
    frames: int = 0
    on_state: object = None  # optional callback(view, received_at) for latency measurements
    _ws: object = None
    _reader: asyncio.Task | None = None
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    # --- auto-reconnect (off by default: a drop ends the bot, as before)
    reconnect: bool = False
    reconnect_delay: float = 0.1  # first wait before reopening; doubles up to the maximum
    reconnect_max_delay: float = 2.0
    reconnect_timeout: float = 120.0  # give up after this long without a working connection
    reconnects: int = 0  # connections reopened so far
    drops: int = 0  # connections lost so far
    gave_up: bool = False
    resyncs: int = 0  # connections dropped on purpose to fetch the current view again
    sent: Counter = field(default_factory=Counter)  # frames sent by type (actions, pings …)
    _fresh: bool = False  # a view (or lobby/release) arrived on the current connection
    _welcomed: bool = False  # the current connection's hello was accepted
    _closing: bool = False

    async def connect(self) -> "BotClient":
        self._ws = await self._open()
        self._reader = asyncio.create_task(self._read())
        return self

    async def _open(self):
        ws = await websockets.connect(ws_url(self.base_url), max_size=2**20, open_timeout=20)
        self._fresh = self._welcomed = False
        await ws.send(HelloFrame(token=self.token).model_dump_json())
        self.sent["hello"] += 1
        return ws

    @property
    def local_port(self) -> int | None:
        """The client-side port of the current connection (a proxy can cut exactly this one)."""
        try:
            return self._ws.local_address[1]
        except Exception:
            return None

    @property
    def connected(self) -> bool:
        return self._ws is not None and getattr(self._ws, "state", None) is websockets.State.OPEN

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, 5)
            except (asyncio.TimeoutError, Exception):
                self._reader.cancel()

    async def _read(self) -> None:
        try:
            while True:
                try:
                    async for raw in self._ws:
                        await self._receive(raw)
                except (websockets.ConnectionClosed, OSError):
                    pass
                if not self.reconnect or self._closing:
                    return
                self.drops += 1
                async with self._changed:
                    self._fresh = False
                    self._changed.notify_all()
                if not await self._reopen():
                    return
        finally:
            async with self._changed:
                self._changed.notify_all()

    async def _reopen(self) -> bool:
        """Reopen the connection with exponential backoff; False once it is hopeless."""
        if not self._welcomed and self.errors and self.errors[-1].code in FATAL_CODES:
            self.gave_up = True  # the server refused this token: reopening cannot help
            return False
        delay = self.reconnect_delay
        give_up_at = time.monotonic() + self.reconnect_timeout
        while not self._closing and time.monotonic() < give_up_at:
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.reconnect_max_delay)
            try:
                self._ws = await self._open()
            except (OSError, websockets.InvalidHandshake, websockets.ConnectionClosed, TimeoutError):
                continue
            self.reconnects += 1
            return True
        self.gave_up = not self._closing
        return False

    async def _receive(self, raw) -> None:
        frame = SERVER_FRAME.validate_json(raw)
        now = time.time()
        self.frames += 1
        async with self._changed:
            if isinstance(frame, StateFrame):
                if self.view is None or frame.view.version >= self.view.version:
                    self.view = frame.view
                self._fresh = True
                if self.on_state:
                    self.on_state(frame.view, now)
            elif isinstance(frame, ErrorFrame):
                self.errors.append(frame)
            elif isinstance(frame, LobbyFrame):
                self.lobby = frame
                self._fresh = True
            elif isinstance(frame, ReleasedFrame):
                self.released = frame
                self._fresh = True
            elif isinstance(frame, WelcomeFrame):
                self.welcome = frame
                self._welcomed = True
            self._changed.notify_all()

    async def send_raw(self, text: str) -> None:
        await self._ws.send(text)

    async def wait_for(self, predicate, timeout: float = 20.0):
        """Wait until ``predicate(self)`` holds; returns its value."""
        deadline = time.monotonic() + timeout
        async with self._changed:
            while True:
                value = predicate(self)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BotError(
                        f"timed out; view={self.view and self.view.model_dump(exclude={'tiles'})} "
                        f"errors={self.errors[-3:]}"
                    )
                try:
                    await asyncio.wait_for(self._changed.wait(), left)
                except asyncio.TimeoutError:
                    pass

    async def _act(self, frame, timeout: float = 20.0) -> None:
        """Send one action and wait for the server's answer (a newer view or an error)."""
        if self.reconnect:
            await self._act_resilient(frame, timeout)
            return
        version = self.view.version
        n_errors = len(self.errors)
        await self._ws.send(frame.model_dump_json())
        self.sent[frame.type] += 1
        await self.wait_for(
            lambda b: (b.view and b.view.version > version) or len(b.errors) > n_errors, timeout
        )
        if len(self.errors) > n_errors:
            error = self.errors[-1]
            raise ActionRejected(f"{type(frame).__name__} rejected: {error}", error.code, error.version)

    async def _act_resilient(self, frame, timeout: float) -> None:
        """``_act`` across drops: wait for a working connection and a fresh view, send, and
        return once answered or once the connection was reopened (the action's fate is then
        unknown: the caller reads the view again and decides anew)."""
        await self.wait_for(lambda b: (b._fresh and b.connected) or b.gave_up, timeout)
        if self.gave_up:
            raise BotError("the connection could not be reopened")
        version = self.view.version if self.view else -1
        n_errors, epoch = len(self.errors), self.reconnects
        try:
            await self._ws.send(frame.model_dump_json())
            self.sent[frame.type] += 1
        except websockets.ConnectionClosed:
            pass
        await self.wait_for(
            lambda b: (b.view and b.view.version > version)
            or len(b.errors) > n_errors
            or (b.reconnects > epoch and b._fresh)
            or b.gave_up,
            timeout,
        )
        if len(self.errors) > n_errors and self.reconnects == epoch:
            error = self.errors[-1]
            raise ActionRejected(f"{type(frame).__name__} rejected: {error}", error.code, error.version)

    async def resync(self) -> None:
        """Drop the connection on purpose (``reconnect=True``): the reconnect's ``hello`` brings
        the whole current view, as a browser reload does."""
        self.resyncs += 1
        async with self._changed:
            self._fresh = False
        try:
            self._ws.transport.abort()
        except Exception:
            pass

    async def say(self, text: str) -> None:
        await self._act(UtteranceFrame(version=self.view.version, text=text))

    async def click(self, tangram_id: str) -> None:
        await self._act(ClickFrame(version=self.view.version, tangram_id=tangram_id))

    async def submit(self) -> None:
        await self._act(SubmitFrame(version=self.view.version))

    async def leave(self) -> None:
        await self._ws.send(LeaveFrame().model_dump_json())
        self.sent["leave"] += 1

    async def select_exactly(self, wanted: set[str]) -> None:
        """Toggle images until the selection is ``wanted`` (deselect first), then submit."""
        current = {t.tangram_id for t in self.view.tiles if t.selected}
        for tid in sorted(current - wanted) + sorted(wanted - current):
            await self.click(tid)
        await self.submit()


# ---------------------------------------------------------------- scripted play


def scripted_utterance(view: GameView) -> str:
    """A bot speaker's message: which ids to deselect and select (bots read ids, not shapes)."""
    wrong = [t.tangram_id for t in view.tiles if t.selected and not t.target]
    missing = [t.tangram_id for t in view.tiles if t.target and not t.selected]
    parts = []
    if wrong:
        parts.append("deselect " + " ".join(wrong))
    if missing:
        parts.append("select " + " ".join(missing[:2]))
    return "; ".join(parts) or "keep it"


def parse_scripted(text: str, known: set[str]) -> tuple[set[str], set[str]]:
    deselect: set[str] = set()
    select: set[str] = set()
    for part in text.split(";"):
        words = part.split()
        if not words:
            continue
        ids = {w for w in words[1:] if w in known}
        (deselect if words[0] == "deselect" else select).update(ids)
    return deselect, select


async def play_speaker(bot: BotClient, wrong_turns: int = 0, timeout: float = 60) -> GameView:
    """Play the speaker seat to the end with scripted messages."""
    while True:
        view = await bot.wait_for(
            lambda b: b.view and (b.view.phase in ("speaking", "ended")) and b.view, timeout
        )
        if view.phase == "ended":
            return view
        await bot.say(scripted_utterance(view))


async def play_listener(bot: BotClient, mistakes: int = 0, timeout: float = 60) -> GameView:
    """Play the listener seat: follow the scripted messages, optionally ignoring the first ones."""
    done_turns: set[int] = set()
    while True:
        view = await bot.wait_for(
            lambda b: b.view
            and (b.view.phase == "ended" or (b.view.phase == "selecting" and b.view.turn not in done_turns))
            and b.view,
            timeout,
        )
        if view.phase == "ended":
            return view
        done_turns.add(view.turn)
        current = {t.tangram_id for t in view.tiles if t.selected}
        if view.turn <= mistakes:
            await bot.submit()  # a listener that does nothing useful this turn
            continue
        known = {t.tangram_id for t in view.tiles}
        deselect, select = parse_scripted(view.messages[-1].text, known)
        await bot.select_exactly((current - deselect) | select)


def _actionable(view: GameView) -> bool:
    if view.phase == "ended":
        return True
    if view.seat == "speaker":
        return view.phase == "speaking" and not any(m.turn == view.turn for m in view.messages)
    return view.phase == "selecting" and not view.turn_submitted


async def play_resilient(bot: BotClient, timeout: float = 120, think: float = 0.0) -> GameView:
    """Play the bot's seat (either one) to the end, deciding every action from the latest view.

    Made for bots with ``reconnect=True``: an action whose answer was lost in a drop is never
    repeated blindly; the view after reconnecting says whether it happened, and the next action
    is chosen from it (the listener clicks one image at a time towards the scripted selection).
    Rejections caused by races (``RACE_CODES``) are expected and skipped. ``think``: seconds
    to wait before each action, as a person would.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = max(0.01, deadline - time.monotonic())
        view = await bot.wait_for(
            lambda b: b._fresh and b.view is not None and _actionable(b.view) and b.view, left
        )
        if view.phase == "ended":
            return view
        if think > 0:
            await asyncio.sleep(think)
            view = bot.view
            if not (bot._fresh and _actionable(view)) or view.phase == "ended":
                continue
        try:
            if view.seat == "speaker":
                await bot.say(scripted_utterance(view))
                continue
            current = {t.tangram_id for t in view.tiles if t.selected}
            message = next((m.text for m in reversed(view.messages) if m.turn == view.turn), "")
            deselect, select = parse_scripted(message, {t.tangram_id for t in view.tiles})
            wanted = (current - deselect) | select
            todo = sorted(current - wanted) + sorted(wanted - current)
            if todo:
                await bot.click(todo[0])
            else:
                await bot.submit()
        except ActionRejected as exc:
            if exc.code not in RACE_CODES:
                raise
            if exc.code == "rate_limited":
                await asyncio.sleep(0.5)
            elif exc.code == "stale_version" and exc.version is not None:
                server_version = exc.version
                if bot.view.version < server_version:
                    # the server is ahead of our view: its newer view should be on its way
                    try:
                        await bot.wait_for(lambda b: b.view.version >= server_version and b._fresh, 2.0)
                    except BotError:
                        if bot.reconnect:
                            await bot.resync()  # it did not come: fetch it, as a reload would
                elif bot.view.version > server_version:
                    await asyncio.sleep(0.2)  # that server has not caught up yet
            else:  # the game moved on without our view knowing: wait for it, else fetch it
                try:
                    await bot.wait_for(lambda b: b.view.version > view.version and b._fresh, 1.0)
                except BotError:
                    if bot.reconnect:
                        await bot.resync()


@dataclass
class GameResult:
    game_id: str
    outcome: str | None
    end_reason: str | None
    turns: int
    completion_codes: tuple[str | None, str | None]


async def play_pair(base_url: str, speaker_token: str, listener_token: str, mistakes: int = 0) -> GameResult:
    speaker = await BotClient(base_url, speaker_token).connect()
    listener = await BotClient(base_url, listener_token).connect()
    try:
        sv, lv = await asyncio.gather(
            play_speaker(speaker), play_listener(listener, mistakes=mistakes)
        )
        sv = await speaker.wait_for(lambda b: b.view.completion_code and b.view)
        lv = await listener.wait_for(lambda b: b.view.completion_code and b.view)
        return GameResult(sv.game_id, sv.outcome, sv.end_reason, sv.turn, (sv.completion_code, lv.completion_code))
    finally:
        await speaker.close()
        await listener.close()


async def play_lobby_games(base_url: str, games: int) -> list[GameResult]:
    """Bots arrive through the lobby and play scripted games. The lobby pairs whoever waits, so
    two bots that arrived together may land in different games: bots are grouped by the game
    they were seated in, not by arrival."""
    tokens = [await join(base_url) for _ in range(2 * games)]
    bots = [await BotClient(base_url, t).connect() for t in tokens]
    try:
        views = await asyncio.gather(*(b.wait_for(lambda b: b.view, 30) for b in bots))
        seats: dict[str, dict[str, BotClient]] = {}
        for v, b in zip(views, bots):
            seats.setdefault(v.game_id, {})[v.seat] = b

        async def one(by_seat: dict[str, BotClient]) -> GameResult:
            sv, _ = await asyncio.gather(
                play_speaker(by_seat["speaker"]), play_listener(by_seat["listener"])
            )
            return GameResult(sv.game_id, sv.outcome, sv.end_reason, sv.turn, (None, None))

        return list(await asyncio.gather(*(one(by_seat) for by_seat in seats.values())))
    finally:
        for b in bots:
            await b.close()


# ---------------------------------------------------------------- replay of recorded games


def recorded_config(game: dict) -> GameConfig:
    return GameConfig(
        context=tuple(sorted(game["speaker_order"])),
        targets=tuple(sorted(game["targets"])),
        speaker_order=tuple(game["speaker_order"]),
        listener_order=tuple(game["listener_order"]),
    )


async def create_game(base_url: str, admin_token: str, config: GameConfig | None, listener: str = "human") -> dict:
    async with httpx.AsyncClient(base_url=base_url, timeout=20) as client:
        r = await client.post(
            "/api/admin/games",
            json={"config": config.model_dump(mode="json") if config else None, "listener": listener},
            headers={"Authorization": f"Bearer {admin_token}"},
        )
        r.raise_for_status()
        return r.json()


async def replay_game(base_url: str, admin_token: str, game: dict) -> GameResult:
    """Replay a recorded game: its utterances, and the listener's selection after each turn."""
    created = await create_game(base_url, admin_token, recorded_config(game))
    speaker = await BotClient(base_url, created["speaker_token"]).connect()
    listener = await BotClient(base_url, created["listener_token"]).connect()
    try:
        for turn, (text, selection) in enumerate(
            zip(game["utterances"], game["selection_after_turn"]), start=1
        ):
            await speaker.wait_for(lambda b: b.view and b.view.phase == "speaking" and b.view.turn == turn)
            await speaker.say(text)
            await listener.wait_for(lambda b: b.view and b.view.phase == "selecting" and b.view.turn == turn)
            await listener.select_exactly(set(selection))
        sv = await speaker.wait_for(lambda b: b.view.phase == "ended" and b.view)
        return GameResult(sv.game_id, sv.outcome, sv.end_reason, sv.turn, (sv.completion_code, None))
    finally:
        await speaker.close()
        await listener.close()


async def replay_file(base_url: str, path: Path, admin_token: str, limit: int | None = None) -> list[GameResult]:
    games = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [await replay_game(base_url, admin_token, g) for g in games[:limit]]
