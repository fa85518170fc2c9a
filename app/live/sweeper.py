"""The server's clock: fires due game deadlines and lobby timeouts.

Every server process runs one; optimistic concurrency in the event log means a deadline fired
by two processes at once is applied once. Games nobody is connected to (both players gone, the
server that held them killed) are still ticked, which is how they end and pay their players.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import select

from app.db.models import Game
from app.game.rules import Tick
from app.live.hub import GameHub
from app.live.lobby import Lobby

log = logging.getLogger("multiref.sweeper")


class Sweeper:
    def __init__(self, hub: GameHub, lobby: Lobby, interval: float = 1.0) -> None:
        self.hub = hub
        self.lobby = lobby
        self.interval = interval
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sweeper")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database restarting, for instance: try again next round
                log.warning("sweep failed: %s", exc)
            await asyncio.sleep(self.interval)

    async def sweep(self) -> int:
        """Tick every live game whose next deadline has passed; returns how many."""
        now = self.hub.clock()
        async with self.hub.db.session() as s:
            due = (
                await s.execute(
                    select(Game.id, Game.speaker_draft)
                    .where(Game.status == "live", Game.next_deadline <= now)
                    .order_by(Game.next_deadline)
                    .limit(500)
                )
            ).all()
        for game_id, draft in due:
            await self.hub.execute(game_id, Tick(at=self.hub.clock(), speaker_draft=draft or ""))
        await self.lobby.sweep()
        await self.lobby.match()
        self.hub.forget_idle()
        return len(due)
