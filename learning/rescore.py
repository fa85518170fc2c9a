"""``multiref rescore``: π_deployed of logged listener actions under a checkpoint (docs/learning.md).

The reference re-scores every logged action after a round under the adapter that produced it,
over the full vocabulary (length-normalised sequence probability), and RL and KTO use that
number. The worker already stores it when it serves an action; this command fills it where it is
missing — above all for imported published games, which arrive without it — or recomputes it
under any checkpoint. Results go to ``action_scores`` (``source = "rescore"``), one row per
(game, turn, checkpoint); :func:`load_deployed_probs` is what training reads.

The default checkpoint of an action is the one that produced it: its listener request's
checkpoint, else its game's. ``--checkpoint ID`` or ``--adapter PATH`` scores every action under
one adapter instead (``PATH`` is recorded as ``adapter:<absolute path>``; ``base`` means the
base model without adapter). Actions whose producing checkpoint is unknown are reported, not
guessed.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from learning.distributed import Runtime, main_loads_async

logger = logging.getLogger("multiref.learning")

BASE = "base"


@dataclass
class Target:
    """One logged action to score."""

    game_id: str
    turn: int
    checkpoint: str  # the key stored with the score
    adapter: str | None  # adapter folder; None: the base model
    action: str
    game: Any  # PromptGame for deciding this turn
    listener_order: list[str]


@dataclass
class RescoreResult:
    actions: int = 0  # model-listener actions in the chosen games
    scored: int = 0
    skipped: int = 0  # already scored under that checkpoint
    unknown: int = 0  # no producing checkpoint known (pass --checkpoint or --adapter)
    checkpoints: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    processes: int = 1  # under accelerate launch: how many shared the work
    per_process: list[int] = field(default_factory=list)  # actions each process scored

    def json(self) -> dict[str, Any]:
        return dict(self.__dict__)


async def load_targets(
    db: Any,
    rounds: Sequence[int] | None = None,
    systems: Sequence[str] | None = None,
    checkpoint: str | None = None,
    adapter: str | Path | None = None,
) -> tuple[list[Target], int]:
    """Model-listener actions of ended games (``rounds`` None: every round, NULL included), each
    with the checkpoint to score it under; and how many had no known producing checkpoint."""
    from sqlalchemy import select

    from app.db.gamelog import load_state
    from app.db.models import Checkpoint, Game, ListenerRequest
    from policy_worker.gamedata import prompt_game
    from policy_worker.prompt import action_text, letter_map

    q = select(Game.id, Game.checkpoint).where(
        Game.status == "ended", Game.listener_kind == "model"
    )
    if rounds is not None:
        q = q.where(Game.round.in_(list(rounds)))
    if systems:
        q = q.where(Game.system.in_(list(systems)))
    targets: list[Target] = []
    unknown = 0
    async with db.session() as s:
        adapters = {c.id: c.adapter for c in (await s.execute(select(Checkpoint))).scalars()}
        if checkpoint is not None and checkpoint != BASE and checkpoint not in adapters:
            raise ValueError(f"no checkpoint {checkpoint!r}; see `multiref systems list`")
        for gid, game_ck in list(await s.execute(q.order_by(Game.id))):
            state = await load_state(s, gid)
            if state is None:
                continue
            requested = {
                t: ck
                for t, ck in await s.execute(
                    select(ListenerRequest.turn, ListenerRequest.checkpoint).where(
                        ListenerRequest.game_id == gid
                    )
                )
            }
            letters = letter_map(state.config.listener_order)
            for record in state.turns:
                if record.utterance is None or record.selection_after is None:
                    continue
                if adapter is not None:
                    key, path = f"adapter:{Path(adapter).resolve()}", str(adapter)
                elif checkpoint is not None:
                    key, path = checkpoint, adapters.get(checkpoint)
                else:
                    key = requested.get(record.turn) or game_ck
                    if key is None:
                        unknown += 1
                        continue
                    path = adapters.get(key)
                targets.append(
                    Target(
                        game_id=gid,
                        turn=record.turn,
                        checkpoint=key,
                        adapter=path or None,
                        action=action_text(
                            record.selection_before, record.selection_after, letters
                        ),
                        game=prompt_game(state, record.turn),
                        listener_order=list(state.config.listener_order),
                    )
                )
    return targets, unknown


async def scored_keys(db: Any) -> set[tuple[str, int, str]]:
    from sqlalchemy import select

    from app.db.models import ActionScore

    async with db.session() as s:
        rows = await s.execute(
            select(ActionScore.game_id, ActionScore.turn, ActionScore.checkpoint)
        )
        return {(g, t, c) for g, t, c in rows}


def score_targets(
    policy: Any,
    targets: Sequence[Target],
    images: Callable[[list[str]], list[Any]],
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> list[tuple[float, int]]:
    """(π_deployed, tokens) per target; each checkpoint's adapter is loaded once, by name."""
    from policy_worker.decoding import DecodeRequest, score_deployed

    names: dict[str, str | None] = {}
    for t in targets:
        if t.adapter and t.checkpoint not in names:
            name = f"rescore-{len(names)}"
            if name not in policy.adapters:
                policy.add_adapter(name, t.adapter)
            names[t.checkpoint] = name
        names.setdefault(t.checkpoint, None)
    out: list[tuple[float, int]] = []
    for k in range(0, len(targets), batch_size):
        chunk = targets[k : k + batch_size]
        requests = [
            DecodeRequest.for_game(t.game, images(t.listener_order), adapter=names[t.checkpoint])
            for t in chunk
        ]
        out += score_deployed(policy, requests, [t.action for t in chunk], batch_size)
        if on_batch:
            on_batch(len(chunk))
    return out


async def store_scores(
    db: Any, targets: Sequence[Target], scores: Sequence[tuple[float, int]], replace: bool
) -> None:
    import math

    from sqlalchemy import delete

    from app.db.models import ActionScore

    now = time.time()
    async with db.session() as s, s.begin():
        for t, (p, n) in zip(targets, scores):
            if replace:
                await s.execute(
                    delete(ActionScore).where(
                        ActionScore.game_id == t.game_id,
                        ActionScore.turn == t.turn,
                        ActionScore.checkpoint == t.checkpoint,
                    )
                )
            s.add(
                ActionScore(
                    game_id=t.game_id,
                    turn=t.turn,
                    checkpoint=t.checkpoint,
                    action=t.action,
                    prob_deployed=p,
                    logp_sum=math.log(max(p, 1e-300)) * n,
                    num_tokens=n,
                    source="rescore",
                    created_at=now,
                )
            )


async def rescore(
    db: Any,
    policy: Any,
    images: Callable[[list[str]], list[Any]],
    rounds: Sequence[int] | None = None,
    systems: Sequence[str] | None = None,
    checkpoint: str | None = None,
    adapter: str | Path | None = None,
    overwrite: bool = False,
    batch_size: int = 16,
    progress: Any = None,
    rt: Runtime | None = None,
) -> RescoreResult:
    """Score the chosen games' model-listener actions and store π_deployed (see the module).

    Under ``accelerate launch`` (``rt`` distributed) the main process reads the actions (``db``
    is None elsewhere), each process scores its share, and the main process stores them all."""
    rt = rt or Runtime()

    async def load() -> tuple[list[Target], int, int]:
        targets, unknown = await load_targets(db, rounds, systems, checkpoint, adapter)
        done = set() if overwrite else await scored_keys(db)
        todo = [t for t in targets if (t.game_id, t.turn, t.checkpoint) not in done]
        return todo, len(targets), unknown

    todo, n_targets, unknown = await main_loads_async(rt, load)
    result = RescoreResult(actions=n_targets + unknown, unknown=unknown, processes=rt.processes)
    result.skipped = n_targets - len(todo)
    mine = rt.split(todo)
    task = None
    if progress is not None:
        task = progress.add_task("rescore" + rt.tag, total=len(mine))
    started = time.perf_counter()
    scores = score_targets(
        policy,
        mine,
        images,
        batch_size,
        (lambda n: progress.advance(task, n)) if progress is not None else None,
    )
    result.per_process = rt.gather([len(mine)])
    scores = rt.gather(scores, total=len(todo))
    result.seconds = time.perf_counter() - started
    if rt.is_main:
        await store_scores(db, todo, scores, replace=overwrite)
    result.scored = len(todo)
    for t in todo:
        result.checkpoints[t.checkpoint] = result.checkpoints.get(t.checkpoint, 0) + 1
    return result


async def load_deployed_probs(
    db: Any,
    game_ids: Sequence[str] | None = None,
    checkpoint: str | None = None,
    whole_action: bool = False,
) -> dict[tuple[str, int], float]:
    """π_deployed per (game, turn) for training: under ``checkpoint`` if given, else the newest
    score of each action (a re-score after serving wins). ``whole_action``: the probability of
    the whole action sequence, exp(Σ log p), the scale training compares π(a|x) on; otherwise
    the length-normalised one stored as ``prob_deployed``."""
    from sqlalchemy import select

    from app.db.models import ActionScore

    q = select(ActionScore).order_by(ActionScore.created_at, ActionScore.id)
    if game_ids is not None:
        q = q.where(ActionScore.game_id.in_(list(game_ids)))
    if checkpoint is not None:
        q = q.where(ActionScore.checkpoint == checkpoint)
    out: dict[tuple[str, int], float] = {}
    async with db.session() as s:
        for row in (await s.execute(q)).scalars():
            out[(row.game_id, row.turn)] = (
                math.exp(row.logp_sum) if whole_action else row.prob_deployed
            )
    return out
