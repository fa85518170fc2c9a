"""The server's clock: fires due game deadlines and lobby timeouts.

Every server process runs one; optimistic concurrency in the event log means a deadline fired
by two processes at once is applied once. Games nobody is connected to (both players gone, the
server that held them killed) are still ticked, which is how they end and pay their players.
"""

from __future__ import annotations

from sqlalchemy import select

from app.db.models import Game
from app.game.rules import Tick
from app.live.background import BackgroundLoop
from app.live.hub import GameHub
from app.live.lobby import Lobby


class Sweeper(BackgroundLoop):
    name = "deadline sweep"

    def __init__(self, hub: GameHub, lobby: Lobby, interval: float = 1.0) -> None:
        super().__init__(interval)
        self.hub = hub
        self.lobby = lobby

    async def step(self) -> int:
        return await self.sweep()

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
