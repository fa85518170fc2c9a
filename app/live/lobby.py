"""The lobby: who plays with whom. Traffic shares, quotas and pauses of listener systems, FIFO
pairing of waiting workers, model listeners, timeouts, game creation, blocking workers.

Pairing reads the queue, then creates the game through the event store (``EventStore.create_game``,
the one way games are created), seating the workers only if they are still waiting: of two
server processes pairing the same worker, one creates the game and the other creates nothing
and reads the queue again.
A worker is never paired with themself (same worker hash).

**Which system an arriving speaker gets** (docs/method.md). Each waiting participant draws one
number u in [0, 1) from a hash of (seed, participant id): a fixed draw that every server process
computes alike and that survives restarts. u picks a system by the shares of the systems open
now (share > 0, not paused, quota not reached), so a paused system's traffic goes to the others
in proportion to their shares. A model system gives the worker a game at once, as speaker, with
that system's active checkpoint; the special system ``human`` waits for another waiting worker
who drew ``human`` too. As long as no system has a positive share, the settings decide as
before: ``listener=human`` pairs humans, ``listener=model`` plays ``model_system``.

**Fair comparison.** Every system replays the same shuffled config queue: a system's n-th game
of a round gets config n (``ConfigQueue.config`` is a pure function of pool, seed and n), so
systems deployed together play the same games.

**Quotas** count a system's games of the current round that are live or were played to the
end (successful or unsuccessful); aborted games do not use up the quota. With several server
processes a quota can be overshot by at most one game per process.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import func, or_, select, text, update

from app import audit
from app.db.database import Database
from app.db.models import BlockedWorker, Game, Participant, System
from app.deploy import HUMAN, current_round
from app.game.configs import ConfigQueue
from app.game.rules import GameConfig, GameRules, ListenerKind, Seat, base_pay
from app.live.bus import Bus
from app.live.participants import Status, release
from app.live.store import NewGame, NotWaiting, event_store

log = logging.getLogger("multiref.lobby")

COMPLETED_OUTCOMES = ("successful", "unsuccessful")
# A waiting worker is paired only while a live lobby socket vouches for them: every server
# process marks the workers it holds a lobby socket for (``present_at``) on each sweep, and a
# waiting row nobody marked for this long (its server was killed) leaves the queue unpaid;
# a socket that still holds them puts them back at the next sweep, their waiting time kept.
PRESENCE_SECONDS = 5.0
MATCH_RETRIES = 5  # reads of the queue per pairing when other processes keep pairing first


@dataclass
class LobbyPolicy:
    listener: str = "human"  # human | model: who fills the listener seat (no shares configured)
    timeout_seconds: float = 300.0
    fallback: str = "release"  # at the timeout: "model" (play a model listener) or "release"
    system: str = "model"  # the model system used for model listeners (no shares configured)
    role_assignment: str = "random"  # random | arrival (the first to wait is the speaker)


@dataclass(frozen=True)
class Route:
    system: str
    kind: str  # model | human
    share: float


@dataclass
class Routing:
    """The systems open to new games now, with their shares, and the current round."""

    routes: list[Route]
    round: int | None
    configured: bool  # some system has a share: the registry decides, not the settings
    counts: dict[str, int] = field(default_factory=dict)  # quota use this round

    def pick(self, u: float, kinds: tuple[str, ...] = ("model", "human")) -> Route | None:
        """The system that the draw ``u`` in [0, 1) falls on, among open routes of ``kinds``."""
        routes = [r for r in self.routes if r.kind in kinds and r.share > 0]
        total = sum(r.share for r in routes)
        if total <= 0:
            return None
        x = u * total
        for r in routes:
            x -= r.share
            if x < 0:
                return r
        return routes[-1]


def assignment_draw(seed: object, participant_id: str) -> float:
    """The participant's fixed draw in [0, 1): the same in every process and after restarts."""
    digest = hashlib.sha256(f"multiref-assign:{seed}:{participant_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


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
        assign_seed: object = None,
    ) -> None:
        self.db = db
        self.bus = bus
        self.store = event_store(db, bus)
        self.rules = rules
        self.configs = configs
        self.policy = policy
        self.split = split
        self.clock = clock
        self.rng = rng or random.Random()
        self.assign_seed = assign_seed if assign_seed is not None else getattr(configs, "seed", 0)
        self._lock = asyncio.Lock()
        # the participants this process holds a lobby socket for (set by the server)
        self.present_ids: Callable[[], list[str]] = list

    # ------------------------------------------------------------ routing

    def default_route(self) -> Route:
        if self.policy.listener == "model":
            return Route(self.policy.system, "model", 1.0)
        return Route(HUMAN, "human", 1.0)

    async def routing(self, s) -> Routing:
        """Open systems and shares now (registry), or the settings' default."""
        round_ = await current_round(s)
        systems = list((await s.execute(select(System).order_by(System.name))).scalars())
        configured = [x for x in systems if x.share > 0]
        if not configured:
            return Routing([self.default_route()], round_, configured=False)
        open_ = [x for x in configured if not x.paused]
        counts = await self.quota_use(s, [x.name for x in open_ if x.quota is not None], round_)
        routes = [
            Route(x.name, x.kind, x.share)
            for x in open_
            if x.quota is None or counts.get(x.name, 0) < x.quota
        ]
        return Routing(routes, round_, configured=True, counts=counts)

    async def quota_use(self, s, systems: list[str], round_: int | None) -> dict[str, int]:
        """Games of the round per system that count against a quota (live or played out)."""
        if not systems:
            return {}
        rows = await s.execute(
            select(Game.system, func.count())
            .where(
                Game.system.in_(systems),
                Game.round.is_(None) if round_ is None else Game.round == round_,
                Game.source == "live",
                or_(Game.status == "live", Game.outcome.in_(COMPLETED_OUTCOMES)),
            )
            .group_by(Game.system)
        )
        return {name: n for name, n in rows}

    def draw(self, participant_id: str) -> float:
        return assignment_draw(self.assign_seed, participant_id)

    # ------------------------------------------------------------ queue

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
                # a worker coming back keeps their place (and their waiting time)
                .values(
                    status=Status.WAITING,
                    waiting_since=func.coalesce(Participant.waiting_since, self.clock()),
                    present_at=self.clock(),
                )
            )
        await self.match()

    async def leave(self, participant_id: str) -> None:
        """The worker's last connection closed while waiting: stop pairing them (a closed tab
        must not become a partner), keeping their waiting time for when they come back."""
        async with self.db.session() as s, s.begin():
            await s.execute(
                update(Participant)
                .where(Participant.id == participant_id, Participant.status == Status.WAITING)
                .values(status=Status.CONSENTED)
            )

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
        """Pick a pair (or a worker for a model listener) from a read of the queue and create
        their game through the event store, seating them only if they still wait: when another
        server process paired one of them first (or they left) nothing is created, and the
        queue is read again. (There is one way to create a game, ``EventStore.create_game``;
        the rows are claimed by that conditional update, not by locks held across the read.)"""
        for _ in range(MATCH_RETRIES):
            picked = await self._pick()
            if picked is None:
                return None
            players, system = picked
            try:
                return await self.create_game_with(players, system=system, waiting=True)
            except NotWaiting:
                continue
        return None  # the queue keeps moving under us: the next arrival or sweep tries again

    async def _pick(self) -> tuple[dict[Seat, str], str] | None:
        """The next game to make from the waiting workers: (seats, system), or None."""
        async with self.db.session() as s:
            waiting = list(
                (
                    await s.execute(
                        select(Participant.id, Participant.worker_hash)
                        .where(
                            Participant.status == Status.WAITING,
                            Participant.present_at >= self.clock() - PRESENCE_SECONDS,
                        )
                        .order_by(Participant.waiting_since, Participant.id)
                        .limit(100)
                    )
                ).all()
            )
            if not waiting:
                return None
            routing = await self.routing(s)
        humans: list = []  # waiting for a human partner, in arrival order
        for p in waiting:
            route = routing.pick(self.draw(p.id))
            if route is None:
                continue  # nothing open for this worker now (paused, quotas reached)
            if route.kind == "model":
                return {Seat.SPEAKER: p.id}, route.system
            partner = next((h for h in humans if h.worker_hash != p.worker_hash), None)
            if partner is None:
                humans.append(p)
                continue
            pair = [partner.id, p.id]
            if self.policy.role_assignment == "random":
                self.rng.shuffle(pair)
            return {Seat.SPEAKER: pair[0], Seat.LISTENER: pair[1]}, route.system
        return None

    async def create_game_for(
        self,
        speaker_id: str,
        listener_id: str | None,
        config: GameConfig | None = None,
        system: str | None = None,
    ) -> str:
        """Create a game for given participants (admin and test use), bypassing the queue."""
        players = {Seat.SPEAKER: speaker_id}
        if listener_id:
            players[Seat.LISTENER] = listener_id
        return await self.create_game_with(players, config=config, system=system)

    async def create_game_with(
        self,
        players: dict[Seat, str],
        new_participants: list[dict] = (),
        config: GameConfig | None = None,
        system: str | None = None,
        audit_entry: dict | None = None,
        game_id: str | None = None,
        waiting: bool = False,
    ) -> str:
        """Create a game in one transaction on the event store's connection: its players
        (``new_participants``: rows made with it, the admin API's bots) and an audit entry
        with it. No listener seat: a model listener. ``waiting``: the players come from the
        queue and must still wait there (else :class:`NotWaiting`, nothing created)."""
        kind = ListenerKind.HUMAN if Seat.LISTENER in players else ListenerKind.MODEL
        if system is None:
            system = HUMAN if kind is ListenerKind.HUMAN else self.policy.system
        game_id = game_id or uuid.uuid4().hex
        await self.store.create_game(NewGame(
            game_id=game_id, listener_kind=kind, system=system, rules=self.rules, at=self.clock(),
            players=players, next_config=self.configs.config, config=config, split=self.split,
            new_participants=list(new_participants), audit=audit_entry, waiting=waiting,
        ))
        log.info("game %s created (%s, %s listener)", game_id, system, kind.value)
        return game_id

    async def mark_present(self) -> int:
        """Vouch for the waiting workers this process holds a lobby socket for, and take out of
        the queue those nobody vouched for lately (their server died: no socket, no partner,
        no release code). They keep their waiting time for when they come back."""
        now = self.clock()
        ids = self.present_ids()
        stale = or_(Participant.present_at.is_(None), Participant.present_at < now - PRESENCE_SECONDS)
        if not ids:  # the usual case of a quiet lobby: read before taking SQLite's write lock
            async with self.db.session() as s:
                ghost = (
                    await s.execute(
                        select(Participant.id).where(Participant.status == Status.WAITING, stale).limit(1)
                    )
                ).first()
            if ghost is None:
                return 0
        async with self.db.session() as s, s.begin():
            for i in range(0, len(ids), 500):
                await s.execute(
                    update(Participant)
                    .where(
                        Participant.id.in_(ids[i : i + 500]),
                        or_(
                            Participant.status == Status.WAITING,
                            # taken out of the queue while their socket lived on (a long stall)
                            (Participant.status == Status.CONSENTED) & Participant.waiting_since.is_not(None),
                        ),
                    )
                    .values(status=Status.WAITING, present_at=now)
                )
            gone = await s.execute(
                update(Participant)
                .where(Participant.status == Status.WAITING, stale)
                .values(status=Status.CONSENTED)
            )
        return gone.rowcount or 0

    async def clear_ghosts(self) -> int:
        """On start: nobody waits behind a socket of this process yet. SQLite has one server
        process, so every waiting row is a ghost of the previous run; on PostgreSQL other
        replicas hold live sockets, so only rows nobody vouched for lately go."""
        if self.db.dialect == "sqlite":
            async with self.db.session() as s, s.begin():
                gone = await s.execute(
                    update(Participant)
                    .where(Participant.status == Status.WAITING)
                    .values(status=Status.CONSENTED)
                )
            return gone.rowcount or 0
        return await self.mark_present()

    async def sweep(self) -> None:
        """Release or fall back the workers who waited past the lobby timeout."""
        await self.mark_present()
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
                async with self.db.session() as s:
                    routing = await self.routing(s)
                route = routing.pick(self.draw(pid), kinds=("model",))
                if route is None and not routing.configured:
                    route = Route(self.policy.system, "model", 1.0)
                if route is not None:
                    try:
                        await self.create_game_with({Seat.SPEAKER: pid}, system=route.system, waiting=True)
                    except NotWaiting:
                        pass  # paired or gone meanwhile
                    continue
            async with self.db.session() as s:
                async with s.begin():
                    p = await s.get(Participant, pid, with_for_update=self.db.dialect == "postgresql")
                    if p is None or p.status != Status.WAITING:
                        continue
                    now = self.clock()
                    await release(s, pid, "lobby_timeout", base_pay(self.rules, now - since), now)
                    staged = [await self.bus.stage(s, {"k": "p", "id": pid})]
            await self.bus.flush(staged)
            log.info("participant %s released after the lobby timeout", pid)

    async def block(self, worker_hash: str, reason: str, actor: str, participant_id: str | None = None) -> list[str]:
        """Block a worker (see :func:`block_worker`) and tell their open pages."""
        async with self.db.session() as s:
            async with s.begin():
                released = await block_worker(
                    s, worker_hash, reason, actor, participant_id=participant_id,
                    rules=self.rules, now=self.clock(), notify=False,
                )
                staged = [await self.bus.stage(s, {"k": "p", "id": pid}) for pid in released]
        await self.bus.flush(staged)
        return released


async def block_worker(
    s,
    worker_hash: str,
    reason: str,
    actor: str,
    participant_id: str | None = None,
    rules: GameRules | None = None,
    now: float | None = None,
    notify: bool = True,
) -> list[str]:
    """Refuse this worker from now on (``blocked_workers``, by keyed worker hash) and release
    them from the lobby queue if they wait there, paid for the time waited. A game in progress
    is not ended (end it separately). Returns the participants released. Caller commits."""
    now = time.time() if now is None else now
    row = await s.get(BlockedWorker, worker_hash)
    if row is None:
        s.add(BlockedWorker(worker_hash=worker_hash, reason=reason[:2000], at=now))
    else:
        row.reason, row.at = reason[:2000], now
    waiting = (
        await s.execute(
            select(Participant.id, Participant.waiting_since).where(
                Participant.worker_hash == worker_hash,
                Participant.status.in_((Status.WAITING, Status.CONSENTED, Status.ARRIVED)),
            )
        )
    ).all()
    released = []
    for pid, since in waiting:
        await release(s, pid, "blocked", base_pay(rules or GameRules(), now - (since or now)), now)
        released.append(pid)
    await audit.record(
        s, actor, audit.BLOCK, participant_id or worker_hash[:16],
        {"worker_hash": worker_hash, "reason": reason, "released": released},
    )
    if notify and released and s.bind.dialect.name == "postgresql":  # pages in other processes
        from app.live.bus import CHANNEL

        for pid in released:
            await s.execute(
                text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": json.dumps({"k": "p", "id": pid})}
            )
    return released
