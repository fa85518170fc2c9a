"""The lobby: FIFO pairing of waiting workers, model listeners, timeouts, game creation.

Pairing runs in one transaction that locks the waiting rows (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so two server processes never pair the same worker twice; SQLite has one writer).
A worker is never paired with themself (same worker hash).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import func, select, update

from app.db.database import Database
from app.db.gamelog import create_game
from app.deploy import active_checkpoint
from app.db.models import Game, Participant
from app.game.configs import ConfigQueue
from app.game.rules import GameConfig, GameCreated, GameRules, ListenerKind, Seat, base_pay
from app.live.bus import Bus
from app.live.participants import Status, release

log = logging.getLogger("multiref.lobby")


@dataclass
class LobbyPolicy:
    listener: str = "human"  # human | model: who fills the listener seat
    timeout_seconds: float = 300.0
    fallback: str = "release"  # at the timeout: "model" (play a model listener) or "release"
    system: str = "model"  # the model system used for model listeners
    role_assignment: str = "random"  # random | arrival (the first to wait is the speaker)


class Lobby:
    def __init__(
        self,
        db: Database,
        bus: Bus,
        rules: GameRules,
        configs: ConfigQueue,
        policy: LobbyPolicy,
        split: str | None = None,
        clock=time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self.bus = bus
        self.rules = rules
        self.configs = configs
        self.policy = policy
        self.split = split
        self.clock = clock
        self.rng = rng or random.Random()
        self._lock = asyncio.Lock()

    async def waiting_count(self) -> int:
        async with self.db.session() as s:
            return (
                await s.execute(
                    select(func.count()).select_from(Participant).where(
                        Participant.status == Status.WAITING
                    )
                )
            ).scalar_one()

    async def enter(self, participant_id: str) -> None:
        """Put a consented participant in the queue (idempotent) and try to pair."""
        async with self.db.session() as s, s.begin():
            await s.execute(
                update(Participant)
                .where(
                    Participant.id == participant_id,
                    Participant.status.in_((Status.CONSENTED, Status.ARRIVED)),
                )
                .values(status=Status.WAITING, waiting_since=self.clock())
            )
        await self.match()

    async def match(self) -> list[str]:
        """Pair waiting participants; returns the games created."""
        created: list[str] = []
        async with self._lock:
            while True:
                game_id = await self._match_one()
                if game_id is None:
                    return created
                created.append(game_id)

    async def _match_one(self) -> str | None:
        staged: list[dict] = []
        async with self.db.session() as s:
            async with s.begin():
                q = (
                    select(Participant)
                    .where(Participant.status == Status.WAITING)
                    .order_by(Participant.waiting_since, Participant.id)
                    .limit(50)
                )
                if self.db.dialect == "postgresql":
                    q = q.with_for_update(skip_locked=True)
                waiting = list((await s.execute(q)).scalars())
                if not waiting:
                    return None
                if self.policy.listener == "model":
                    speaker, listener = waiting[0], None
                else:
                    first = waiting[0]
                    partner = next((p for p in waiting[1:] if p.worker_hash != first.worker_hash), None)
                    if partner is None:
                        return None
                    pair = [first, partner]
                    if self.policy.role_assignment == "random":
                        self.rng.shuffle(pair)
                    speaker, listener = pair
                game_id = await self._create(s, speaker, listener, staged)
        await self.bus.flush(staged)
        return game_id

    async def _next_config(self, s, system: str | None) -> tuple[int, GameConfig]:
        """Configs are replayed per system from one shuffled queue (fair comparison, §2)."""
        index = (
            await s.execute(
                select(func.count()).select_from(Game).where(
                    Game.system.is_(None) if system is None else Game.system == system,
                    Game.source == "live",
                )
            )
        ).scalar_one()
        return index, self.configs.config(index)

    async def _create(
        self, s, speaker: Participant, listener: Participant | None, staged: list[dict],
        config: GameConfig | None = None,
    ) -> str:
        game_id = uuid.uuid4().hex
        kind = ListenerKind.HUMAN if listener is not None else ListenerKind.MODEL
        system = None if listener is not None else self.policy.system
        index = None
        if config is None:
            index, config = await self._next_config(s, system)
        checkpoint = await active_checkpoint(s, system) if system else None
        now = self.clock()
        await create_game(
            s,
            GameCreated(game_id=game_id, config=config, rules=self.rules, listener_kind=kind, at=now),
            system=system,
            checkpoint=checkpoint,
            split=self.split,
            config_index=index,
            speaker_id=speaker.id,
            listener_id=listener.id if listener else None,
        )
        for p, seat in ((speaker, Seat.SPEAKER), (listener, Seat.LISTENER)):
            if p is None:
                continue
            p.status, p.game_id, p.seat, p.waiting_since = Status.IN_GAME, game_id, seat.value, None
            staged.append(await self.bus.stage(s, {"k": "p", "id": p.id}))
        log.info("game %s created (%s listener)", game_id, kind.value)
        return game_id

    async def create_game_for(
        self, speaker_id: str, listener_id: str | None, config: GameConfig | None = None
    ) -> str:
        """Create a game for given participants (admin and test use), bypassing the queue."""
        staged: list[dict] = []
        async with self.db.session() as s:
            async with s.begin():
                speaker = await s.get(Participant, speaker_id)
                listener = await s.get(Participant, listener_id) if listener_id else None
                game_id = await self._create(s, speaker, listener, staged, config=config)
        await self.bus.flush(staged)
        return game_id

    async def sweep(self) -> None:
        """Release or fall back the workers who waited past the lobby timeout."""
        cutoff = self.clock() - self.policy.timeout_seconds
        async with self.db.session() as s:
            due = list(
                (
                    await s.execute(
                        select(Participant.id, Participant.waiting_since).where(
                            Participant.status == Status.WAITING,
                            Participant.waiting_since <= cutoff,
                        )
                    )
                ).all()
            )
        for pid, since in due:
            if self.policy.fallback == "model":
                staged: list[dict] = []
                async with self.db.session() as s:
                    async with s.begin():
                        p = await s.get(Participant, pid, with_for_update=self.db.dialect == "postgresql")
                        if p is None or p.status != Status.WAITING:
                            continue
                        await self._create(s, p, None, staged)
                await self.bus.flush(staged)
                continue
            async with self.db.session() as s:
                async with s.begin():
                    p = await s.get(Participant, pid, with_for_update=self.db.dialect == "postgresql")
                    if p is None or p.status != Status.WAITING:
                        continue
                    await release(s, pid, "lobby_timeout", base_pay(self.rules, self.clock() - since))
                    staged = [await self.bus.stage(s, {"k": "p", "id": pid})]
            await self.bus.flush(staged)
            log.info("participant %s released after the lobby timeout", pid)
