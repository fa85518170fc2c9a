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

log = logging.getLogger("multiref.bot")


class BotError(RuntimeError):
    pass


def ws_url(base_url: str) -> str:
    return re.sub(r"^http", "ws", base_url.rstrip("/")) + "/ws"


async def join(base_url: str, params: dict[str, str] | None = None, consent: bool = True) -> str:
    """Arrive through the study-link API (and consent); returns the participant token."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        r = await client.post("/api/join", json={"params": params or {}})
        if r.status_code != 200:
            raise BotError(f"join refused: {r.status_code} {r.text}")
        token = r.json()["token"]
        if consent:
            r = await client.post("/api/consent", headers={"Authorization": f"Bearer {token}"})
            r.raise_for_status()
    return token


@dataclass
class BotClient:
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

    async def connect(self) -> "BotClient":
        self._ws = await websockets.connect(ws_url(self.base_url), max_size=2**20, open_timeout=20)
        await self._ws.send(HelloFrame(token=self.token).model_dump_json())
        self._reader = asyncio.create_task(self._read())
        return self

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, 5)
            except (asyncio.TimeoutError, Exception):
                self._reader.cancel()

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                frame = SERVER_FRAME.validate_json(raw)
                now = time.time()
                self.frames += 1
                async with self._changed:
                    if isinstance(frame, StateFrame):
                        if self.view is None or frame.view.version >= self.view.version:
                            self.view = frame.view
                        if self.on_state:
                            self.on_state(frame.view, now)
                    elif isinstance(frame, ErrorFrame):
                        self.errors.append(frame)
                    elif isinstance(frame, LobbyFrame):
                        self.lobby = frame
                    elif isinstance(frame, ReleasedFrame):
                        self.released = frame
                    elif isinstance(frame, WelcomeFrame):
                        self.welcome = frame
                    self._changed.notify_all()
        except websockets.ConnectionClosed:
            pass
        finally:
            async with self._changed:
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
        version = self.view.version
        n_errors = len(self.errors)
        await self._ws.send(frame.model_dump_json())
        await self.wait_for(
            lambda b: (b.view and b.view.version > version) or len(b.errors) > n_errors, timeout
        )
        if len(self.errors) > n_errors:
            raise BotError(f"{type(frame).__name__} rejected: {self.errors[-1]}")

    async def say(self, text: str) -> None:
        await self._act(UtteranceFrame(version=self.view.version, text=text))

    async def click(self, tangram_id: str) -> None:
        await self._act(ClickFrame(version=self.view.version, tangram_id=tangram_id))

    async def submit(self) -> None:
        await self._act(SubmitFrame(version=self.view.version))

    async def leave(self) -> None:
        await self._ws.send(LeaveFrame().model_dump_json())

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
    """Bots arrive through the lobby in pairs and play scripted games."""

    async def one() -> GameResult:
        tokens = [await join(base_url), await join(base_url)]
        bots = [await BotClient(base_url, t).connect() for t in tokens]
        try:
            views = [await b.wait_for(lambda b: b.view, 30) for b in bots]
            by_seat = {v.seat: b for v, b in zip(views, bots)}
            sv, _ = await asyncio.gather(
                play_speaker(by_seat["speaker"]), play_listener(by_seat["listener"])
            )
            return GameResult(sv.game_id, sv.outcome, sv.end_reason, sv.turn, (None, None))
        finally:
            for b in bots:
                await b.close()

    return list(await asyncio.gather(*(one() for _ in range(games))))


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
