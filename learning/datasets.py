"""Training data D≤ρ and held-out human turns, from the database (docs/method.md).

An example is one decoded listener action: the policy prompt for that turn — rebuilt from the
game's event log with ``policy_worker.gamedata.prompt_game`` and ``prompt.build_chat``, the
same code the policy worker used, and checked against the exact ``model_input`` the worker
logged when there is one — the action taken, the decoded label, and the deployed policy's
probability of the action (``ListenerRequest.prob_action``; none for human listeners).

The held-out set is the turns of human–human games: model selection compares the policy's
action with the human listener's action.

The **seed task** (docs/learning.md) is the other human–human games: their good listener turns
(:func:`good_move`) plus synthetic "deselect the last selection" / "clear all" turns built from
them. It trains π0 alone and is mixed into every later round. Human–human games are split between
the two by a hash of the game id (:func:`human_game_side`), so no game is both trained on and used
for model selection.

:class:`ActionCollator` turns examples into tensors (prompt with images, action tokens, the
tokens constrained decoding allowed at each step); the losses live in ``learning.losses``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from policy_worker.prompt import (
    LETTERS,
    NOTHING,
    PromptGame,
    PromptTurn,
    build_chat,
    format_action,
    parse_action,
    remap_action,
    render_prompt,
    shuffle_letters,
)

logger = logging.getLogger("multiref.learning")

HUMAN = "human"
INTERACTION, SEED = "interaction", "seed"
SEED_UNDO, SEED_CLEAR = "seed-undo-last", "seed-clear-all"  # synthetic seed turns

# Speaker requests for the synthetic seed turns (our wording; one is picked per turn by a hash).
DESELECT_LAST_UTTERANCES = (
    "undo your last pick",
    "no, take back what you just chose",
    "wrong, deselect the ones you just picked",
    "not those, remove your last selection",
    "that last choice was wrong, unselect it",
)
CLEAR_ALL_UTTERANCES = (
    "clear everything",
    "deselect all of them",
    "start over, unselect every image",
    "remove all your picks",
    "no, clear your whole selection",
)


@dataclass(frozen=True)
class Example:
    """One listener action with what the policy saw when deciding it."""

    game_id: str
    turn: int
    game: PromptGame  # the dialogue up to this turn; its last turn has no action (undecided)
    action: str  # canonical action text in the prompt's letters
    label: int | None = None  # decoded feedback (+1 / 0 / −1); None for held-out turns
    prob: float | None = None  # the deployed policy's probability of the action (None: unknown)
    system: str | None = None
    round: int | None = None
    listener_kind: str = "model"
    decoder_version: str | None = None
    source: str = INTERACTION  # interaction (D≤ρ) | seed | seed-undo-last | seed-clear-all

    def key(self) -> str:
        suffix = "" if self.source in (INTERACTION, SEED) else f"_{self.source}"
        return f"{self.game_id}_{self.turn}{suffix}"

    @property
    def is_seed(self) -> bool:
        return self.source != INTERACTION

    @property
    def selected(self) -> list[str]:
        return self.game.current_selected_letters()


@dataclass
class DataStats:
    """What went into a dataset, for the manifest."""

    count: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    games: int = 0
    rounds: list[int | None] = field(default_factory=list)
    decoder_versions: list[str] = field(default_factory=list)
    with_prob: int = 0
    model_inputs_checked: int = 0
    model_input_mismatches: int = 0
    action_mismatches: int = 0
    sources: dict[str, int] = field(default_factory=dict)
    sha256: str = ""

    def json(self) -> dict:
        return dict(self.__dict__)


def data_hash(examples: Sequence[Example]) -> str:
    """A fingerprint of a dataset: ids, actions, labels, probabilities (order-independent)."""
    rows = sorted(
        json.dumps(
            [e.game_id, e.turn, e.action, e.label, e.prob]
            + ([] if e.source == INTERACTION else [e.source]),
            separators=(",", ":"),
        )
        for e in examples
    )
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def _stats(examples: Sequence[Example], **extra: Any) -> DataStats:
    labels = Counter("none" if e.label is None else f"{e.label:+d}" for e in examples)
    return DataStats(
        count=len(examples),
        labels=dict(sorted(labels.items())),
        games=len({e.game_id for e in examples}),
        rounds=sorted({e.round for e in examples}, key=lambda r: -1 if r is None else r),
        decoder_versions=sorted({e.decoder_version for e in examples if e.decoder_version}),
        with_prob=sum(e.prob is not None for e in examples),
        sha256=data_hash(examples),
        **extra,
    )


def _round_filter(column: Any, max_round: int | None, include_unrounded: bool) -> Any:
    from sqlalchemy import or_

    if max_round is None:
        return column.is_(None) if include_unrounded else column.is_not(None)
    return or_(column <= max_round, column.is_(None)) if include_unrounded else column <= max_round


async def load_examples(
    db: Any,
    decoder: str,
    max_round: int | None,
    systems: Sequence[str] | None = None,
    include_unrounded: bool = True,
    listener_kinds: Sequence[str] = ("model",),
    decoder_version: str | None = None,
    prob: str = "constrained",
    renderer: Any = None,
    strict: bool = False,
    deployed_probs: Mapping[tuple[str, int], float] | None = None,
) -> tuple[list[Example], DataStats]:
    """D≤ρ: every action labelled by ``decoder`` in games of round ≤ ``max_round``.

    ``systems`` limits the games to those systems (None: all); games whose round is NULL (such
    as imported or replayed games) count when ``include_unrounded``. With several labels of one
    action, ``decoder_version`` picks one, else the newest wins. ``prob`` chooses the stored
    probability: ``constrained`` (``prob_action``, what decoding sampled from) or
    ``unconstrained``. With a ``renderer`` (processor), each model turn's rebuilt prompt is
    compared with the worker's ``model_input``: a mismatch is counted and logged (raised if
    ``strict``). ``deployed_probs`` ((game, turn) -> the whole action's full-vocabulary
    probability, as ``multiref rescore`` computes it) replaces the stored probability of the
    ``full`` kind and fills the actions that have none (imported games).
    """
    from sqlalchemy import select

    from app.db.gamelog import load_state
    from app.db.models import FeedbackLabel, Game, ListenerRequest
    from policy_worker.gamedata import prompt_game

    q = (
        select(FeedbackLabel, Game.round, Game.system, Game.listener_kind)
        .join(Game, Game.id == FeedbackLabel.game_id)
        .where(FeedbackLabel.decoder == decoder, Game.listener_kind.in_(list(listener_kinds)))
        .where(_round_filter(Game.round, max_round, include_unrounded))
        .order_by(FeedbackLabel.created_at, FeedbackLabel.id)
    )
    if systems is not None:
        q = q.where(Game.system.in_(list(systems)))
    if decoder_version is not None:
        q = q.where(FeedbackLabel.decoder_version == decoder_version)
    chosen: dict[tuple[str, int], tuple[Any, int | None, str | None, str]] = {}
    async with db.session() as s:
        for label, rnd, system, kind in await s.execute(q):
            chosen[(label.game_id, label.turn)] = (label, rnd, system, kind)  # newest last
        game_ids = sorted({g for g, _ in chosen})
        requests: dict[tuple[str, int], Any] = {}
        for k in range(0, len(game_ids), 500):
            rows = await s.execute(
                select(ListenerRequest).where(
                    ListenerRequest.game_id.in_(game_ids[k : k + 500]),
                    ListenerRequest.status.in_(("done", "applied")),
                )
            )
            for r in rows.scalars():
                requests[(r.game_id, r.turn)] = r
        states = {g: await load_state(s, g) for g in game_ids}

    examples: list[Example] = []
    checked = mismatched = action_mismatch = 0
    for (gid, turn), (label, rnd, system, kind) in sorted(chosen.items()):
        state = states.get(gid)
        if state is None:
            continue
        full = prompt_game(state, turn, include_action=True)
        action = full.turns[-1].action
        assert action is not None
        game = PromptGame(
            listener_order=full.listener_order,
            turns=[*full.turns[:-1], _undecided(full.turns[-1])],
        )
        p = None
        req = requests.get((gid, turn))
        if req is not None and kind == "model":
            if req.action is not None and req.action != action:
                action_mismatch += 1
                logger.warning(
                    "%s turn %d: applied %r, worker chose %r", gid, turn, action, req.action
                )
            else:
                p = req.prob_action if prob == "constrained" else req.prob_unconstrained
            if renderer is not None and req.model_input:
                checked += 1
                rebuilt = render_prompt(renderer, build_chat(game))
                if rebuilt != req.model_input:
                    mismatched += 1
                    msg = f"{gid} turn {turn}: rebuilt prompt differs from the worker's model_input"
                    if strict:
                        raise ValueError(msg)
                    logger.warning(msg)
        if prob != "constrained" and deployed_probs and (gid, turn) in deployed_probs:
            p = deployed_probs[(gid, turn)]
        examples.append(
            Example(
                game_id=gid,
                turn=turn,
                game=game,
                action=action,
                label=label.label,
                prob=p,
                system=system,
                round=rnd,
                listener_kind=kind,
                decoder_version=label.decoder_version,
            )
        )
    stats = _stats(
        examples,
        model_inputs_checked=checked,
        model_input_mismatches=mismatched,
        action_mismatches=action_mismatch,
    )
    return examples, stats


def _undecided(turn: Any) -> Any:
    from dataclasses import replace

    return replace(turn, action=None)


def human_game_side(game_id: str, seed: int, heldout_fraction: float) -> str:
    """``heldout`` or ``seed``: a fixed split of human–human games by a hash of seed and id."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:split:{game_id}".encode()).digest()[:8], "big")
    return "heldout" if h / 2**64 < heldout_fraction else "seed"


def good_move(before: Sequence[str], after: Sequence[str], targets: Sequence[str]) -> bool:
    """the reference's +1: the newly selected images are all targets or the deselected ones all
    non-targets, the other part being empty or also good; an unchanged selection is not good."""
    b, a, goal = set(before), set(after), set(targets)
    selected, deselected = a - b, b - a
    if not selected and not deselected:
        return False
    return selected <= goal and not (deselected & goal)


async def _human_games(s: Any, *where: Any) -> list[tuple[str, int | None, str | None]]:
    """Ended human–human games by id, narrowed by SQL conditions on ``Game`` in ``where``."""
    from sqlalchemy import select

    from app.db.models import Game

    q = select(Game.id, Game.round, Game.system).where(
        Game.listener_kind == HUMAN, Game.status == "ended", *where
    )
    return list(await s.execute(q.order_by(Game.id)))


def rounds_up_to(max_round: int | None, include_unrounded: bool) -> Any:
    """The SQL condition on ``Game.round`` of the training data: rounds ≤ ``max_round``."""
    from app.db.models import Game

    return _round_filter(Game.round, max_round, include_unrounded)


async def human_turns(
    db: Any,
    *where: Any,
    heldout_fraction: float | None = None,
    changed_only: bool = False,
    good_only: bool = False,
    limit: int | None = None,
    seed: int = 0,
) -> tuple[list[Example], dict[str, int]]:
    """Human listeners' submitted turns of ended human–human games, as undecided examples.

    The one loader behind the model-selection set (:func:`load_heldout`) and the evaluation set
    (``learning.evaluate.load_heldout_turns``). Games: those the SQL conditions on ``Game`` in
    ``where`` select (e.g. :func:`rounds_up_to`); with ``heldout_fraction``
    only those :func:`human_game_side` puts on the held-out side. Turns: ``changed_only`` drops
    those that left the selection as it was, ``good_only`` keeps good selects or deselects
    (``learning.retrospect.is_good_move``). Above ``limit`` a fixed sample is kept (by a hash of
    seed and turn id, so it does not change as games are added). Returns the examples and how
    many turns each filter dropped.
    """
    from app.db.gamelog import load_state
    from learning.retrospect import is_good_move
    from policy_worker.gamedata import prompt_game

    examples: list[Example] = []
    dropped = {"not_good": 0, "nothing": 0}
    async with db.session() as s:
        for gid, rnd, system in await _human_games(s, *where):
            if heldout_fraction is not None and (
                human_game_side(gid, seed, heldout_fraction) != "heldout"
            ):
                continue
            state = await load_state(s, gid)
            if state is None:
                continue
            for record in state.turns:
                if record.utterance is None or record.selection_after is None:
                    continue
                changed = set(record.selection_before) != set(record.selection_after)
                if changed_only and not changed:
                    dropped["nothing"] += 1
                    continue
                if good_only and not (
                    changed
                    and is_good_move(
                        record.selection_before, record.selection_after, state.config.targets
                    )
                ):
                    dropped["not_good"] += 1
                    continue
                full = prompt_game(state, record.turn, include_action=True)
                examples.append(
                    Example(
                        game_id=gid,
                        turn=record.turn,
                        game=PromptGame(
                            full.listener_order, [*full.turns[:-1], _undecided(full.turns[-1])]
                        ),
                        action=str(full.turns[-1].action),
                        system=system or HUMAN,
                        round=rnd,
                        listener_kind=HUMAN,
                    )
                )
    if limit is not None and len(examples) > limit:

        def rank(e: Example) -> str:
            return hashlib.sha256(f"{seed}:{e.key()}".encode()).hexdigest()

        examples = sorted(sorted(examples, key=rank)[:limit], key=lambda e: (e.game_id, e.turn))
    return examples, dropped


async def load_heldout(
    db: Any,
    max_round: int | None,
    include_unrounded: bool = True,
    limit: int | None = 500,
    seed: int = 0,
    heldout_fraction: float | None = None,
    good_only: bool = False,
) -> tuple[list[Example], DataStats]:
    """Turns of human–human games (round ≤ ``max_round``): the model-selection set.

    ``good_only`` (the paper profile): only turns that changed the selection with a good
    select or deselect, as the reference's held-out set. Every submitted turn counts otherwise
    (no label needed). With ``heldout_fraction`` (the seed task is on), only the games
    :func:`human_game_side` puts on the held-out side count; the others are the seed task's.
    """
    examples, _ = await human_turns(
        db,
        rounds_up_to(max_round, include_unrounded),
        heldout_fraction=heldout_fraction,
        good_only=good_only,
        limit=limit,
        seed=seed,
    )
    return examples, _stats(examples)


def _pick(options: Sequence[str], seed: int, key: str) -> str:
    return options[example_seed(seed, 0, key) % len(options)]


def seed_turns(
    state: Any, seed: int = 0, synthetic: bool = True, drop_empty: bool = True
) -> list[Example]:
    """The seed task's examples from one ended human–human game (docs/learning.md).

    * every good listener turn (:func:`good_move`), label +1;
    * after a turn whose new selection was not all targets: a synthetic next turn where the
      speaker asks to undo it and the listener deselects exactly what that turn selected;
    * after a turn that leaves something selected: a synthetic "clear all" turn that
      deselects everything.
    A turn whose action changed nothing is never an example when ``drop_empty``.
    """
    from policy_worker.gamedata import prompt_game

    targets = list(state.config.targets)
    out: list[Example] = []
    for record in state.turns:
        if record.utterance is None or record.selection_after is None:
            continue
        before, after = list(record.selection_before), list(record.selection_after)
        full = prompt_game(state, record.turn, include_action=True)
        action = str(full.turns[-1].action)
        common = dict(system=HUMAN, round=None, listener_kind=HUMAN, label=1)
        if good_move(before, after, targets) and not (drop_empty and action == NOTHING):
            game = PromptGame(full.listener_order, [*full.turns[:-1], _undecided(full.turns[-1])])
            out.append(Example(state.game_id, record.turn, game, action, source=SEED, **common))
        if not synthetic:
            continue
        letters = full.letter_of()
        newly = sorted(set(after) - set(before))
        requests = []
        if newly and not set(newly) <= set(targets):
            requests.append((SEED_UNDO, DESELECT_LAST_UTTERANCES, newly))
        if after:
            requests.append((SEED_CLEAR, CLEAR_ALL_UTTERANCES, sorted(after)))
        for source, phrases, to_deselect in requests:
            key = f"{state.game_id}_{record.turn}_{source}"
            turn = PromptTurn(_pick(phrases, seed, key), sorted(after), None)
            game = PromptGame(full.listener_order, [*full.turns, turn])
            act = format_action(sorted(letters[t] for t in to_deselect), [])
            out.append(Example(state.game_id, record.turn + 1, game, act, source=source, **common))
    return out


async def load_seed_examples(
    db: Any,
    max_round: int | None,
    include_unrounded: bool = True,
    seed: int = 0,
    heldout_fraction: float | None = None,
    synthetic: bool = True,
    drop_empty: bool = True,
) -> tuple[list[Example], DataStats]:
    """The seed task: :func:`seed_turns` of every ended human–human game of round ≤
    ``max_round`` on the seed side of the split."""
    from app.db.gamelog import load_state

    examples: list[Example] = []
    async with db.session() as s:
        games = await _human_games(s, rounds_up_to(max_round, include_unrounded))
        for gid, _rnd, _system in games:
            if heldout_fraction is not None and (
                human_game_side(gid, seed, heldout_fraction) != "seed"
            ):
                continue
            state = await load_state(s, gid)
            if state is None:
                continue
            examples.extend(seed_turns(state, seed, synthetic, drop_empty))
    sources = Counter(e.source for e in examples)
    return examples, _stats(examples, **{"sources": dict(sorted(sources.items()))})


def mismatched_single_click(example: Example) -> str:
    """KTO's mismatched action a′ (docs/learning.md): one click on the first image, or on the
    second when the action taken was exactly one click on the first; in the example's letters."""
    letters = LETTERS[: len(example.game.listener_order)]
    deselect, select = parse_action(example.action)
    first = letters[0]
    click = letters[1] if deselect + select == [first] else first
    selected = example.game.current_selected_letters()
    return format_action([click], []) if click in selected else format_action([], [click])


# ---------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class Sample:
    """An example as fed to the model: possibly letter-shuffled."""

    example: Example
    game: PromptGame
    action: str
    mapping: dict[str, str] | None = None  # old letter -> new letter (None: not shuffled)

    def remap(self, action: str) -> str:
        """Another action of the example (in its letters) in this sample's letters."""
        return action if self.mapping is None else remap_action(action, self.mapping)


def example_seed(seed: int, epoch: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{epoch}:{key}".encode()).digest()[:8], "big")


def augment(example: Example, rng: random.Random | None) -> Sample:
    """Letter shuffling: a new on-screen order for the listener's images, every letter (past
    actions and the target action) relabelled to match. ``rng=None``: unchanged (evaluation)."""
    if rng is None:
        return Sample(example, example.game, example.action)
    game, mapping = shuffle_letters(example.game, rng)
    return Sample(example, game, remap_action(example.action, mapping), mapping)


class ActionDataset:
    """Examples with per-epoch, per-example seeded augmentation (reproducible on resume)."""

    def __init__(self, examples: Sequence[Example], shuffle: bool, seed: int) -> None:
        self.examples = list(examples)
        self.shuffle = shuffle
        self.seed = seed

    def __len__(self) -> int:
        return len(self.examples)

    def sample(self, i: int, epoch: int) -> Sample:
        e = self.examples[i]
        rng = random.Random(example_seed(self.seed, epoch, e.key())) if self.shuffle else None
        return augment(e, rng)

    def order(self, epoch: int) -> list[int]:
        idx = list(range(len(self.examples)))
        random.Random(example_seed(self.seed, epoch, "order")).shuffle(idx)
        return idx


# ---------------------------------------------------------------- collation


class ActionCollator:
    """Samples -> tensors: the prompt (with images), the action's tokens, and at each action
    step the token ids constrained decoding allowed (to renormalise as the deployed policy did).

    The prompt is processed as ``policy_worker.decoding`` does (left-padded processor call;
    the images through the same image processor, cached per tangram) and the action tokens are
    ``decoding.action_token_ids``, so a teacher-forced log-probability here equals the one
    decoding stored.
    """

    def __init__(
        self,
        policy: Any,
        images: Callable[[list[str]], list[Any]],
        max_new_tokens: int = 10,
        with_allowed: bool = True,
    ) -> None:
        self.policy = policy
        self.images = images
        self.max_new_tokens = max_new_tokens
        self.with_allowed = with_allowed  # False: skip the tries (losses over the full vocabulary)
        self._pixels: dict[str, tuple[Any, Any]] = {}  # tangram id -> processed image, its mask

    def pixels(self, orders: Sequence[Sequence[str]]) -> dict[str, Any]:
        """``pixel_values`` [B, N, 3, H, W] and ``pixel_attention_mask`` [B, N, H, W] for the
        listener orders, each tangram processed once and cached (the image processor treats
        images one by one: without splitting, a batch only pads them to a common size)."""
        import torch

        for tid in {t for order in orders for t in order} - set(self._pixels):
            one = self.policy.processor.image_processor([self.images([tid])], return_tensors="pt")
            self._pixels[tid] = (one["pixel_values"][0, 0], one["pixel_attention_mask"][0, 0])
        shapes = {self._pixels[t][0].shape for order in orders for t in order}
        if len(shapes) != 1:  # images of several sizes: let the processor pad them
            batch = self.policy.processor.image_processor(
                [self.images(list(order)) for order in orders], return_tensors="pt"
            )
            return {
                "pixel_values": batch["pixel_values"],
                "pixel_attention_mask": batch["pixel_attention_mask"],
            }
        return {
            "pixel_values": torch.stack(
                [torch.stack([self._pixels[t][0] for t in o]) for o in orders]
            ),
            "pixel_attention_mask": torch.stack(
                [torch.stack([self._pixels[t][1] for t in o]) for o in orders]
            ),
        }

    def _steps(
        self, game: PromptGame, action: str
    ) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
        from policy_worker.decoding import action_token_ids, action_trie
        from policy_worker.prompt import LETTERS

        if not self.with_allowed:
            return action_token_ids(self.policy, [action])[0], []
        letters = list(LETTERS[: len(game.listener_order)])
        selected = game.current_selected_letters()
        for budget in (self.max_new_tokens, 64):  # an action too long to sample: the full trie
            trie = action_trie(self.policy, selected, letters, budget)
            if action in trie.token_ids:
                return trie.token_ids[action], trie.step_allowed[action]
        return action_token_ids(self.policy, [action])[0], []

    def __call__(self, samples: Sequence[Sample]) -> dict[str, Any]:
        import torch

        policy = self.policy
        prompts = [render_prompt(policy.processor, build_chat(s.game)) for s in samples]
        batch = policy.processor(text=prompts, padding=True, return_tensors="pt")
        batch.update(self.pixels([s.game.listener_order for s in samples]))
        steps = [self._steps(s.game, s.action) for s in samples]
        n, width = len(samples), max(len(t) for t, _ in steps)
        k_max = max([len(a) for _, allowed in steps for a in allowed] or [1])
        pad = policy.tokenizer.pad_token_id if policy.tokenizer.pad_token_id is not None else 0
        targets = torch.full((n, width), pad, dtype=torch.long)
        target_mask = torch.zeros((n, width), dtype=torch.bool)
        allowed = torch.zeros((n, width, k_max), dtype=torch.long)
        allowed_mask = torch.zeros((n, width, k_max), dtype=torch.bool)
        for b, (ids, allow) in enumerate(steps):
            targets[b, : len(ids)] = torch.tensor(ids)
            target_mask[b, : len(ids)] = True
            for t, a in enumerate(allow):
                allowed[b, t, : len(a)] = torch.tensor(a)
                allowed_mask[b, t, : len(a)] = True
        input_ids = torch.cat([batch["input_ids"], targets], dim=1)
        attention_mask = torch.cat([batch["attention_mask"], target_mask.long()], dim=1)
        out = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
            "targets": targets,
            "target_mask": target_mask,
            "allowed": allowed,
            "allowed_mask": allowed_mask,
            "labels": torch.tensor([s.example.label or 0 for s in samples], dtype=torch.long),
            "seed": torch.tensor([s.example.is_seed for s in samples], dtype=torch.bool),
            "deployed_probs": torch.tensor(
                [math.nan if s.example.prob is None else s.example.prob for s in samples],
                dtype=torch.float64,
            ),
        }
        for key in ("pixel_values", "pixel_attention_mask"):
            if key in batch:
                out[key] = batch[key]
        return out


def model_inputs(batch: dict[str, Any], device: Any, dtype: Any) -> dict[str, Any]:
    """The forward's keyword arguments on ``device`` (pixels in the model's dtype)."""
    out = {}
    for key in (
        "input_ids",
        "attention_mask",
        "position_ids",
        "pixel_values",
        "pixel_attention_mask",
    ):
        if key in batch:
            v = batch[key].to(device)
            out[key] = v.to(dtype) if key == "pixel_values" else v
    return out
