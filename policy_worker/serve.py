"""The policy worker's serve loop: claim listener turns, decode them in batches, write back.

A worker meets the game server only through the database. It claims pending requests of the
systems it serves under a lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so workers never take
the same turn; a claim whose lease ran out — its worker died — is taken again), builds each
prompt from the game's event log, decodes a batch with the request's checkpoint (one LoRA
adapter per checkpoint on one base model) in the configured decoding mode (``paper`` by default,
``grammar`` as an option: ``policy_worker.decoding``), and writes the action, its probabilities,
the checkpoint, the latency and the exact model input back, with π_deployed (the full-vocabulary,
length-normalised probability RL and KTO read) in ``action_scores``. It wakes on LISTEN/NOTIFY on
PostgreSQL and polls on SQLite, and writes a heartbeat the server's admin pages read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import and_, or_, select, text, update

from app.db.database import Database
from app.db.gamelog import load_state
from app.db.models import ActionScore, Checkpoint, ListenerRequest, WorkerHeartbeat
from app.live.bus import CHANNEL, PostgresBus, asyncpg_dsn
from policy_worker.gamedata import TangramImages, prompt_game

log = logging.getLogger("multiref.worker")


@dataclass
class WorkerOptions:
    systems: list[str]  # the model systems this worker serves
    base: str  # hub id or local folder of the base model
    tangrams: Path
    device: str = "auto"
    dtype: str = "bfloat16"
    temperature: float = 1.0
    decoding: str = "paper"  # paper (docs/learning.md) | grammar
    max_batch_size: int = 16
    max_wait_seconds: float = 0.02  # gather a batch for at most this long after the first turn
    lease_seconds: float = 20.0
    poll_seconds: float = 0.2
    heartbeat_seconds: float = 2.0
    max_attempts: int = 3
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")


@dataclass
class Claimed:
    id: int
    game_id: str
    turn: int
    system: str
    checkpoint: str | None
    deadline: float
    attempts: int


class PolicyWorker:
    def __init__(self, db: Database, options: WorkerOptions, policy=None) -> None:
        self.db = db
        self.options = options
        self.policy = policy  # a LoadedPolicy; loaded at start when None
        self.images = TangramImages(options.tangrams)
        self.adapters: dict[str, str | None] = {}  # checkpoint id -> adapter name loaded (None: base)
        self.started_at = time.time()
        self.served = 0
        self._wake = asyncio.Event()
        self._adapter_lock = asyncio.Lock()  # serving and preloading may ask for one adapter at once
        self._bus: PostgresBus | None = None
        self._tasks: list[asyncio.Task] = []
        self._stopping = False

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.policy is None:
            from policy_worker.model import load_policy

            self.policy = await asyncio.to_thread(
                load_policy, self.options.base, None, self.options.dtype, self.options.device
            )
        if self.db.dialect == "postgresql":
            self._bus = PostgresBus(asyncpg_dsn(self.db.url))
            self._bus.subscribe(self._on_bus)
            await self._bus.start()
        self._tasks = [
            asyncio.create_task(self._serve_forever(), name="worker-serve"),
            asyncio.create_task(self._heartbeat_forever(), name="worker-heartbeat"),
        ]
        log.info("worker %s serving %s with %s", self.options.worker_id, self.options.systems, self.options.base)

    async def stop(self) -> None:
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        if self._bus:
            await self._bus.stop()
        await self._beat("stopped")

    async def _on_bus(self, message: dict) -> None:
        if message.get("k") == "r":
            self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def _heartbeat_forever(self) -> None:
        while True:
            try:
                await self._beat("serving")
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(self.options.heartbeat_seconds)

    async def _beat(self, status: str) -> None:
        now = time.time()
        values = {
            "host": socket.gethostname(),
            "systems": self.options.systems,
            "checkpoints": {
                "base": self.options.base,
                "loaded": sorted(self.adapters),
                "served": self.served,
            },
            "status": status,
            "beat_at": now,
        }
        async with self.db.session() as s, s.begin():
            row = await s.get(WorkerHeartbeat, self.options.worker_id)
            if row is None:
                s.add(WorkerHeartbeat(worker_id=self.options.worker_id, started_at=self.started_at, **values))
            else:
                for k, v in values.items():
                    setattr(row, k, v)

    # ------------------------------------------------------------ serving

    async def _serve_forever(self) -> None:
        while True:
            try:
                served = await self.serve_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("serve loop error")
                served = 0
                await asyncio.sleep(1.0)
            if not served:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.options.poll_seconds)
                except TimeoutError:
                    pass

    async def serve_once(self) -> int:
        """Claim up to one batch, decode it, write it back; returns how many turns were served."""
        batch = await self.claim(self.options.max_batch_size)
        if not batch:
            return 0
        if len(batch) < self.options.max_batch_size and self.options.max_wait_seconds > 0:
            await asyncio.sleep(self.options.max_wait_seconds)  # let concurrent turns join
            batch += await self.claim(self.options.max_batch_size - len(batch))
        await self._ensure_adapters({c.checkpoint for c in batch})
        prepared = []
        for c in batch:
            try:
                prepared.append((c, await self._request(c)))
            except Exception as exc:
                log.exception("could not build the prompt of %s turn %s", c.game_id, c.turn)
                await self._fail(c, f"prompt: {exc!r}")
        if not prepared:
            return 0
        from policy_worker.decoding import decode_actions

        try:
            results = await asyncio.to_thread(
                decode_actions, self.policy, [r for _, r in prepared], self.options.max_batch_size
            )
        except Exception as exc:
            for c, r in prepared:
                log.exception("model error on %s turn %s; input: %s", c.game_id, c.turn, _model_input(r))
                await self._fail(c, f"model: {exc!r}")
            return 0
        for (c, r), res in zip(prepared, results):
            await self._complete(c, res)
        self.served += len(prepared)
        return len(prepared)

    async def claim(self, limit: int) -> list[Claimed]:
        if limit <= 0:
            return []
        now = time.time()
        o = self.options
        async with self.db.session() as s, s.begin():
            q = (
                select(ListenerRequest.id)
                .where(
                    ListenerRequest.system.in_(o.systems),
                    ListenerRequest.deadline > now,
                    or_(
                        ListenerRequest.status == "pending",
                        and_(ListenerRequest.status == "claimed", ListenerRequest.lease_until < now),
                    ),
                )
                .order_by(ListenerRequest.created_at)
                .limit(limit)
            )
            if self.db.dialect == "postgresql":
                q = q.with_for_update(skip_locked=True)
            ids = [i for (i,) in await s.execute(q)]
            if not ids:
                return []
            rows = await s.execute(
                update(ListenerRequest)
                .where(ListenerRequest.id.in_(ids))
                .values(
                    status="claimed",
                    worker_id=o.worker_id,
                    lease_until=now + o.lease_seconds,
                    attempts=ListenerRequest.attempts + 1,
                )
                .returning(
                    ListenerRequest.id,
                    ListenerRequest.game_id,
                    ListenerRequest.turn,
                    ListenerRequest.system,
                    ListenerRequest.checkpoint,
                    ListenerRequest.deadline,
                    ListenerRequest.attempts,
                )
            )
            return [Claimed(*row) for row in rows]

    async def _ensure_adapters(self, checkpoints: set[str | None]) -> None:
        """Load the adapters of checkpoints seen for the first time (hot swap, no restart)."""
        async with self._adapter_lock:
            await self._load_adapters(checkpoints)

    async def _load_adapters(self, checkpoints: set[str | None]) -> None:
        missing = [c for c in checkpoints if c is not None and c not in self.adapters]
        if not missing:
            return
        async with self.db.session() as s:
            rows = (await s.execute(select(Checkpoint).where(Checkpoint.id.in_(missing)))).scalars().all()
        for ck in rows:
            if ck.adapter:
                await asyncio.to_thread(self.policy.add_adapter, ck.id, ck.adapter)
                self.adapters[ck.id] = ck.id
            else:
                self.adapters[ck.id] = None
            log.info("checkpoint %s loaded (%s)", ck.id, ck.adapter or "base model only")

    async def preload_active(self) -> None:
        """Load the active checkpoints of the served systems before games need them."""
        async with self.db.session() as s:
            ids = [
                i
                for (i,) in await s.execute(
                    select(Checkpoint.id).where(
                        Checkpoint.system.in_(self.options.systems), Checkpoint.active.is_(True)
                    )
                )
            ]
        await self._ensure_adapters(set(ids))

    async def _request(self, c: Claimed):
        from policy_worker.decoding import DecodeRequest

        async with self.db.session() as s:
            state = await load_state(s, c.game_id)
        if state is None:
            raise LookupError(f"game {c.game_id} not found")
        game = prompt_game(state, c.turn)
        adapter = self.adapters.get(c.checkpoint) if c.checkpoint else None
        return DecodeRequest.for_game(
            game,
            self.images.images(list(state.config.listener_order)),
            adapter=adapter,
            temperature=self.options.temperature,
            decoding=self.options.decoding,
        )

    async def _complete(self, c: Claimed, res) -> None:
        async with self.db.session() as s, s.begin():
            result = await s.execute(
                update(ListenerRequest)
                .where(
                    ListenerRequest.id == c.id,
                    ListenerRequest.worker_id == self.options.worker_id,
                    ListenerRequest.status == "claimed",
                )
                .values(
                    status="done",
                    action=res.action,
                    prob_action=res.prob_constrained,
                    prob_unconstrained=res.prob_unconstrained,
                    latency_s=res.latency_s,
                    model_input=res.prompt,
                    done_at=time.time(),
                    error=None,
                )
            )
            if result.rowcount != 1:
                log.warning("turn %s/%s was taken from this worker (lease expired)", c.game_id, c.turn)
                return
            if res.prob_deployed is not None:
                n = max(res.num_action_tokens, 1)
                s.add(
                    ActionScore(
                        game_id=c.game_id,
                        turn=c.turn,
                        checkpoint=c.checkpoint or "base",
                        action=res.action,
                        prob_deployed=res.prob_deployed,
                        logp_sum=math.log(max(res.prob_deployed, 1e-300)) * n,
                        num_tokens=n,
                        source="serve",
                        created_at=time.time(),
                    )
                )
            if self.db.dialect == "postgresql":
                await s.execute(
                    text("SELECT pg_notify(:c, :p)"),
                    {"c": CHANNEL, "p": json.dumps({"k": "r", "id": c.game_id, "done": True})},
                )

    async def _fail(self, c: Claimed, error: str) -> None:
        status = "failed" if c.attempts >= self.options.max_attempts else "pending"
        async with self.db.session() as s, s.begin():
            await s.execute(
                update(ListenerRequest)
                .where(ListenerRequest.id == c.id, ListenerRequest.worker_id == self.options.worker_id)
                .values(status=status, error=error[:4000], lease_until=None)
            )


def _model_input(request) -> str:
    try:
        return json.dumps(request.chat)[:4000]
    except (TypeError, ValueError):
        return repr(request.chat)[:4000]
