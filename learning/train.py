"""Training a system's next checkpoint on D≤ρ: SUP, RL and KTO (docs/method.md, docs/learning.md).

A system name says its variant: ``B-SUP`` is the binary decoder's labels with the supervised
loss, ``T-KTO`` the ternary decoder's with KTO, and so on (a config's ``variant`` key names it
for other system names). One config dataclass per method holds every knob; its ``profile``
fills the defaults: ``paper`` (the default) reproduces the reference implementation point by
point, ``project`` is this project's earlier behaviour, and each point is also a key of its
own. A TOML or JSON file overrides them (top-level keys for all methods, a ``[sup]`` / ``[rl]``
/ ``[kto]`` table for one)::

    profile = "paper"
    epochs = 10
    [kto]
    beta = 0.3

Data: D≤ρ plus the human–human seed task (``seed_task``); ``train(..., pi0=True)`` trains the
initial policy from the seed task alone. Restart vs continue: SUP and RL start each round from
the base model with a fresh adapter; KTO continues from the previous round's adapter (the
system's newest checkpoint of round ≤ ρ, or ``--init-adapter``). The epoch kept is the one with
the best accuracy on held-out human–human turns. Each epoch saves the adapter, optimiser,
scheduler and random states under ``OUT/state`` so ``--resume`` continues an interrupted run
where it stopped. The manifest records the profile, every reference setting as applied and the
deviations from the paper.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from learning import losses
from learning.datasets import ActionCollator, ActionDataset, Example, model_inputs
from learning.distributed import Runtime, runtime
from learning.distributed import main_loads as _main_loads
from learning.evaluate import heldout_metric

logger = logging.getLogger("multiref.learning")

METHODS = ("sup", "rl", "kto")
DECODER_OF_PREFIX = {"B": "binary", "T": "ternary"}
MANIFEST_FORMAT = "multiref-adapter/1"


# ---------------------------------------------------------------- configs


PROFILES = ("paper", "project")
TEXT_LORA_TARGETS = (
    r".*text_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
)
# docs/learning.md: the text model and the connector (modality projection, perceiver resampler).
PAPER_LORA_TARGETS = (
    r".*(text_model|modality_projection|perceiver_resampler).*"
    r"\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
)


@dataclass
class TrainConfig:
    """Shared defaults (docs/method.md, docs/learning.md). Method configs below add their own fields.

    ``profile`` fills every field left at None: ``paper`` reproduces the reference
    implementation, ``project`` is this project's earlier behaviour. Each such field is
    one row of the table in docs/learning.md; a config file or override sets any of them.
    """

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {
            "lora_targets": PAPER_LORA_TARGETS,
            "lora_init": "gaussian",
            "optimizer": "paged_adamw_8bit",
            "weight_decay": 0.01,
            "micro_batch_size": 32,
            "policy_prob": "full",
            "seed_task": True,
            "drop_empty_turns": True,
            "selection": "sample",
            "heldout_good_only": True,
        },
        "project": {
            "lora_targets": TEXT_LORA_TARGETS,
            "lora_init": "default",
            "optimizer": "adamw",
            "weight_decay": 0.0,
            "micro_batch_size": 4,
            "policy_prob": "constrained",
            "seed_task": False,
            "drop_empty_turns": False,
            "selection": "greedy",
            "heldout_good_only": False,
        },
    }

    variant: str = ""  # e.g. "B-SUP"; empty: read from the system name
    profile: str = "paper"  # paper (as the reference) | project: fills every field left at None
    # LoRA (r, α, dropout as docs/method.md); targets: paper = text + connector + perceiver, project = text
    lora_r: int = 8
    lora_alpha: int = 8
    lora_dropout: float = 0.1
    lora_targets: str | None = None
    lora_init: str | None = None  # gaussian (paper) | default (peft's Kaiming A, zero B)
    init: str = ""  # fresh | previous; empty: the method's rule (SUP, RL fresh; KTO previous)
    # optimisation
    # paged_adamw_8bit (AdamW runs without bitsandbytes or CUDA) | adamw | rmsprop
    optimizer: str | None = None
    learning_rate: float = 1e-4
    weight_decay: float | None = None
    lr_scheduler: str = "cosine"  # cosine | constant
    warmup_steps: int = 10
    epochs: int = 20
    effective_batch_size: int = 64  # examples per optimiser step (gradient accumulation)
    micro_batch_size: int | None = None  # examples per forward pass (memory only: same update)
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    dtype: str = "auto"  # auto: bfloat16 on an accelerator, float32 on the CPU
    device: str = "auto"
    seed: int = 42
    # data
    shuffle_letters: bool = True  # letter-shuffling augmentation (never at evaluation)
    include_unrounded: bool = True  # games with round NULL (imported, replayed) count as ≤ ρ
    data_systems: list[str] | None = None  # None: the trained system's own games; ["*"]: all
    decoder_version: str | None = None  # None: the newest label of each action
    # π(a|x) for RL and KTO, and the stored π_deployed it is compared with: full (the whole
    # vocabulary, prob_unconstrained / `multiref rescore`) | constrained (prob_action)
    policy_prob: str | None = None
    max_new_tokens: int = 10  # the deployed decoding budget (for the constrained steps)
    seed_task: bool | None = None  # mix the human–human seed task into every round (as the reference)
    seed_synthetic: bool = True  # with it, the synthetic "undo last" / "clear all" turns
    seed_label_smoothing: float = 0.1  # the seed task's SUP loss, whatever the method
    heldout_fraction: float = 0.5  # share of human–human games held out when seed_task is on
    drop_empty_turns: bool | None = None  # drop turns whose action changed nothing
    # model selection
    selection: str | None = None  # sample (T = 1, no grammar: paper) | greedy (exact match)
    heldout_good_only: bool | None = None  # held-out turns filtered to good moves (paper)
    max_heldout_turns: int = 500
    eval_batch_size: int = 16
    eval_before_training: bool = True

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, not {self.profile!r}")
        merged: dict[str, Any] = {}
        for cls in reversed(type(self).__mro__):
            merged.update(cls.__dict__.get("PROFILE_DEFAULTS", {}).get(self.profile, {}))
        for key, value in merged.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.policy_prob == "unconstrained":
            self.policy_prob = "full"
        if self.policy_prob not in ("full", "constrained"):
            raise ValueError(f"policy_prob must be full or constrained, not {self.policy_prob!r}")

    @property
    def method(self) -> str:
        return parse_variant(self.variant)[1]

    @property
    def decoder(self) -> str:
        return parse_variant(self.variant)[0]

    def json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SUPConfig(TrainConfig):
    """B-SUP / T-SUP: positives only, length-normalised NLL with label smoothing."""

    label_smoothing: float = 0.1


@dataclass
class RLConfig(TrainConfig):
    """B-RL / T-RL: REINFORCE with rewards per label and importance weights for non-positives;
    paper: 0.9 · REINFORCE + 0.1 · |r| · smoothing, neutral examples dropped (as the reference)."""

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"label_smoothing": 0.1, "drop_neutral": True},
        "project": {"label_smoothing": 0.0, "drop_neutral": False},
    }

    reward_positive: float = 1.0
    reward_neutral: float = 0.0
    reward_negative: float = -0.1
    weight_floor: float = 0.01  # the importance weight's denominator is at least this
    label_smoothing: float | None = None
    drop_neutral: bool | None = None

    @property
    def rewards(self) -> dict[int, float]:
        return {1: self.reward_positive, 0: self.reward_neutral, -1: self.reward_negative}


@dataclass
class KTOConfig(TrainConfig):
    """B-KTO / T-KTO: positives desirable, negatives undesirable, reference = stored probs;
    paper: 0.99 · KTO + 0.01 · smoothing, π_ref ≥ 0.01, z from mismatched single clicks (as the reference)."""

    PROFILE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {
            "label_smoothing": 0.01,
            "reference_floor": 0.01,
            "kl_estimate": "mismatched",
            "lr_scheduler": "constant",
            "shuffle_letters": True,
        },
        # The reference is the deployed prompt's probability: shuffled letters would compare
        # the policy on another prompt with it, so the project trained on the prompts as played.
        "project": {
            "label_smoothing": 0.0,
            "reference_floor": 0.0,
            "kl_estimate": "batch",
            "lr_scheduler": "cosine",
            "shuffle_letters": False,
        },
    }

    beta: float = 0.5
    optimizer: str | None = "rmsprop"
    learning_rate: float = 1e-5
    lr_scheduler: str | None = None  # type: ignore[assignment]
    shuffle_letters: bool | None = None  # type: ignore[assignment]
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    label_smoothing: float | None = None
    reference_floor: float | None = None  # π_ref = max(stored probability, this)
    # z: mismatched (single-click a′ over the effective batch, before the update: paper) |
    # batch (the batch's own log-ratios) | zero
    kl_estimate: str | None = None


CONFIGS: dict[str, type[TrainConfig]] = {"sup": SUPConfig, "rl": RLConfig, "kto": KTOConfig}


def parse_variant(name: str) -> tuple[str, str]:
    """``B-SUP`` -> ("binary", "sup"); the decoder from the first letter, method from the end."""
    head, _, tail = name.partition("-")
    method = tail.split("-")[0].lower() if tail else ""
    if head.upper() not in DECODER_OF_PREFIX or method not in METHODS:
        raise ValueError(
            f"cannot read a variant from {name!r}: use B-SUP, T-SUP, B-RL, T-RL, B-KTO or T-KTO "
            "(or set `variant` in the config)"
        )
    return DECODER_OF_PREFIX[head.upper()], method


def starts_fresh(config: TrainConfig) -> bool:
    """The restart-vs-continue rule: SUP and RL restart from the base with a fresh adapter each
    round; KTO continues from the previous round's adapter. A config's ``init`` overrides it."""
    if config.init:
        if config.init not in ("fresh", "previous"):
            raise ValueError(f"init must be fresh or previous, not {config.init!r}")
        return config.init == "fresh"
    return config.method in ("sup", "rl")


def _read_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        return json.loads(text)
    import tomllib

    return tomllib.loads(text)


def load_config(
    system: str, path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """The method config for ``system``, with a config file's values and ``overrides`` applied."""
    data = _read_config_file(path) if path else {}
    variant = (overrides or {}).get("variant") or data.get("variant") or system
    _, method = parse_variant(variant)
    cls = CONFIGS[method]
    values = {k: v for k, v in data.items() if not isinstance(v, dict)}
    for section in (method, variant, variant.lower()):
        if isinstance(data.get(section), dict):
            values.update(data[section])
    values.update(overrides or {})
    values["variant"] = variant
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {method} config keys {unknown}; known: {sorted(known)}")
    return cls(**values)


# ---------------------------------------------------------------- model


def resolve_dtype_name(config: TrainConfig, device: Any) -> str:
    if config.dtype != "auto":
        return config.dtype
    return "float32" if device.type == "cpu" else "bfloat16"


def attach_adapter(policy: Any, config: TrainConfig, init_adapter: str | Path | None) -> Any:
    """Wrap ``policy.model`` with a trainable LoRA: fresh (seeded) or from ``init_adapter``."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    if init_adapter is None:
        torch.manual_seed(config.seed)
        if config.lora_init not in ("gaussian", "default"):
            raise ValueError(f"lora_init must be gaussian or default, not {config.lora_init!r}")
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.lora_targets,
            init_lora_weights="gaussian" if config.lora_init == "gaussian" else True,
        )
        model = get_peft_model(policy.model, lora)
    else:
        model = PeftModel.from_pretrained(policy.model, str(init_adapter), is_trainable=True)
    model.to(policy.device)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    policy.model = model
    policy.adapters = {}  # use_adapter(None) now runs the trainable adapter
    return model


# ---------------------------------------------------------------- losses on a batch


def batch_losses(
    model: Any,
    batch: dict[str, Any],
    config: TrainConfig,
    device: Any,
    dtype: Any,
    kl: Any = None,
) -> Any:
    """Per-example losses [B] of the config's method on a collated batch.

    Seed-task examples (``batch["seed"]``) take the SUP loss with ``seed_label_smoothing``
    whatever the method. ``kl`` is KTO's reference point z when computed outside the batch
    (``kl_estimate = "mismatched"``: :func:`mismatched_reference_point`).
    """
    import torch

    targets = batch["targets"].to(device)
    mask = batch["target_mask"].to(device)
    width = targets.shape[1]
    out = model(**model_inputs(batch, device, dtype), logits_to_keep=width + 1)
    logits = out.logits[:, :-1]  # position j predicts action token j
    full, mean_lp = losses.token_logps(logits, targets)
    seed = batch["seed"].to(device) if "seed" in batch else torch.zeros_like(mask[:, 0])
    seed_loss = losses.sup_loss(full, mean_lp, mask, config.seed_label_smoothing)
    if isinstance(config, SUPConfig):
        loss = losses.sup_loss(full, mean_lp, mask, config.label_smoothing)
        return torch.where(seed, seed_loss, loss)
    smoothing = losses.smoothing_term(mean_lp, mask)
    lp = policy_token_logps(logits, batch, config, device, full)
    labels = batch["labels"].to(device)
    deployed = batch["deployed_probs"].to(device=device, dtype=torch.float32)
    seq = losses.sequence_logps(lp, mask, normalise=False)
    if isinstance(config, RLConfig):
        norm = losses.sequence_logps(lp, mask, normalise=True)
        w = losses.importance_weights(seq, deployed, labels == 1, config.weight_floor)
        r = losses.rewards_for(labels, config.rewards)
        loss = losses.rl_loss(norm, r, w, smoothing, config.label_smoothing)
    elif isinstance(config, KTOConfig):
        ref = torch.log(deployed.clamp(min=max(config.reference_floor, 1e-30)))
        if kl is None:
            if config.kl_estimate == "mismatched":
                raise ValueError("kl_estimate = mismatched: pass z (mismatched_reference_point)")
            live = ~seed
            kl = (
                losses.kto_reference_point(seq[live], ref[live])
                if config.kl_estimate == "batch" and bool(live.any())
                else 0.0
            )
        kto = losses.kto_loss(
            seq,
            ref,
            labels == 1,
            kl,
            config.beta,
            config.desirable_weight,
            config.undesirable_weight,
        )
        loss = losses.smoothed(kto, smoothing, config.label_smoothing)
    else:
        raise TypeError(f"no loss for {type(config).__name__}")
    return torch.where(seed, seed_loss, loss)


def sequence_logps_of(
    model: Any, batch: dict[str, Any], config: TrainConfig, device: Any, dtype: Any
) -> Any:
    """log π(a|x) [B] of each batch action (not normalised), as the method's loss sees it."""
    width = batch["targets"].shape[1]
    out = model(**model_inputs(batch, device, dtype), logits_to_keep=width + 1)
    lp = policy_token_logps(out.logits[:, :-1], batch, config, device)
    return losses.sequence_logps(lp, batch["target_mask"].to(device), normalise=False)


def mismatched_samples(samples: Sequence[Any]) -> list[Any]:
    """Each sample with its action replaced by the mismatched single click a′ (same letters)."""
    from learning.datasets import mismatched_single_click

    return [
        dataclasses.replace(s, action=s.remap(mismatched_single_click(s.example)))
        for s in samples
    ]


def mismatched_reference_table(
    model: Any,
    examples: Sequence[Example],
    collator: Any,
    config: TrainConfig,
    device: Any,
    dtype: Any,
) -> dict[str, float]:
    """log π_ref(a′|x) of every KTO example's mismatched single click, floored at
    ``reference_floor``, scored by the model as loaded (the deployed adapter KTO continues
    from) on the prompts as played: the paper's stored table of one-click alternatives."""
    import torch

    from learning.datasets import augment

    table: dict[str, float] = {}
    live = [e for e in examples if not e.is_seed]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for k in range(0, len(live), config.micro_batch_size):
                part = live[k : k + config.micro_batch_size]
                chunk = mismatched_samples([augment(e, None) for e in part])
                seq = sequence_logps_of(model, collator(chunk), config, device, dtype)
                floor = math.log(max(config.reference_floor, 1e-30))
                for s, v in zip(chunk, seq.tolist()):
                    table[s.example.key()] = max(v, floor)
    finally:
        model.train(was_training)
    return table


def mismatched_reference_point(
    model: Any,
    samples: Sequence[Any],
    table: dict[str, float],
    collator: Any,
    config: TrainConfig,
    device: Any,
    dtype: Any,
    reduce: Callable[[Any], Any] | None = None,
) -> Any:
    """KTO's z (as the reference): max(0, mean over the whole effective batch of log π(a′) − log π_ref(a′)),
    a′ the mismatched single clicks, computed before the update (no gradient). ``reduce``
    sums a tensor over processes when each holds a share of the effective batch."""
    import torch

    live = [s for s in samples if not s.example.is_seed]
    if reduce is not None:
        if not live:  # still take part in the sum
            total = reduce(torch.zeros(2, device=device, dtype=torch.float64))
            return (total[0] / total[1]).clamp(min=0.0).float() if total[1] else total[0].float()
    elif not live:
        return torch.zeros((), device=device)
    ratios = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for k in range(0, len(live), config.micro_batch_size):
                chunk = mismatched_samples(live[k : k + config.micro_batch_size])
                seq = sequence_logps_of(model, collator(chunk), config, device, dtype)
                ref = torch.tensor([table[s.example.key()] for s in chunk], device=seq.device)
                ratios.append(seq.float() - ref)
    finally:
        model.train(was_training)
    if reduce is not None:
        mine = torch.cat(ratios).double()
        total = reduce(torch.stack([mine.sum(), torch.tensor(float(len(mine)), device=mine.device)]))
        return (total[0] / total[1]).clamp(min=0.0).float()
    return torch.cat(ratios).mean().clamp(min=0.0)


def policy_token_logps(
    logits: Any, batch: dict[str, Any], config: TrainConfig, device: Any, full: Any = None
) -> Any:
    """log π per action token, over the whole vocabulary (paper) or constrained (as grammar
    decoding sampled)."""
    import torch

    targets = batch["targets"].to(device)
    if full is None:
        full, _ = losses.token_logps(logits, targets)
    if config.policy_prob != "constrained":
        return full
    allowed_mask = batch["allowed_mask"].to(device)
    constrained = losses.constrained_token_logps(
        logits, targets, batch["allowed"].to(device), allowed_mask
    )
    has_trie = allowed_mask.flatten(1).any(-1)[:, None]  # examples outside the grammar: full
    return torch.where(has_trie, constrained, full)


def select_examples(
    examples: Sequence[Example], config: TrainConfig
) -> tuple[list[Example], dict[str, int]]:
    """What each method trains on: SUP positives; RL every label (neutral dropped in the paper
    profile); KTO ±1 with a stored prob. Seed-task examples stay whatever the method; turns
    whose action changed nothing go when ``drop_empty_turns``."""
    from policy_worker.prompt import NOTHING

    kept: list[Example] = []
    empty = neutral = 0
    for e in examples:
        if config.drop_empty_turns and e.action == NOTHING:
            empty += 1
            continue
        if e.is_seed:
            kept.append(e)
        elif isinstance(config, SUPConfig):
            if e.label == 1:
                kept.append(e)
        elif isinstance(config, KTOConfig):
            if e.label in (1, -1) and e.prob is not None:
                kept.append(e)
        elif isinstance(config, RLConfig) and config.drop_neutral and e.label == 0:
            neutral += 1
        else:
            kept.append(e)
    return kept, {
        "available": len(examples),
        "used": len(kept),
        "dropped": len(examples) - len(kept),
        "dropped_empty": empty,
        "dropped_neutral": neutral,
        "seed": sum(e.is_seed for e in kept),
    }


# ---------------------------------------------------------------- evaluation


def exact_match(
    policy: Any,
    heldout: Sequence[Example],
    images: Callable[[list[str]], list[Any]],
    batch_size: int = 16,
    max_new_tokens: int = 10,
    on_batch: Callable[[int], None] | None = None,
    adapter: str | None = None,
) -> float | None:
    """Share of held-out turns where the greedy (temperature 0) action equals the human's.

    ``adapter`` names a loaded adapter of a served policy; None runs ``policy.model`` as it is
    (while training: the adapter being trained)."""
    from policy_worker.decoding import DecodeRequest, decode_actions

    if not heldout:
        return None
    was_training = policy.model.training
    policy.model.eval()
    hits = 0
    try:
        for k in range(0, len(heldout), batch_size):
            chunk = heldout[k : k + batch_size]
            requests = [
                DecodeRequest.for_game(
                    e.game,
                    images(list(e.game.listener_order)),
                    temperature=0.0,
                    max_new_tokens=max_new_tokens,
                    adapter=adapter,
                )
                for e in chunk
            ]
            results = decode_actions(policy, requests, max_batch_size=batch_size)
            hits += sum(r.action == e.action for r, e in zip(results, chunk))
            if on_batch:
                on_batch(len(chunk))
    finally:
        if was_training:
            policy.model.train()
    return hits / len(heldout)


# ---------------------------------------------------------------- the loop


@dataclass
class EpochMetrics:
    epoch: int
    loss: float | None
    heldout_exact_match: float | None
    steps: int
    examples: int
    seconds: float
    examples_per_s: float | None
    learning_rate: float | None


@dataclass
class FitResult:
    metrics: list[EpochMetrics] = field(default_factory=list)
    best_epoch: int | None = None
    best_exact_match: float | None = None
    resumed_from_epoch: int | None = None
    optimizer: str | None = None  # what actually ran (paged 8-bit AdamW falls back to AdamW)

    def json(self) -> dict[str, Any]:
        return {
            "metrics": [dataclasses.asdict(m) for m in self.metrics],
            "best_epoch": self.best_epoch,
            "best_exact_match": self.best_exact_match,
            "resumed_from_epoch": self.resumed_from_epoch,
            "optimizer": self.optimizer,
        }


def _rng_state() -> dict[str, Any]:
    import torch

    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _optimizer(params: list[Any], config: TrainConfig) -> tuple[Any, str]:
    """The optimiser and the name of what actually runs (recorded in the manifest):
    ``paged_adamw_8bit`` needs bitsandbytes and CUDA parameters, else plain AdamW runs."""
    import torch

    name = config.optimizer
    if name == "paged_adamw_8bit":
        on_cuda = bool(params) and params[0].is_cuda
        try:
            import bitsandbytes as bnb  # type: ignore[import-not-found]
        except ImportError:
            bnb = None
        if bnb is not None and on_cuda:
            opt = bnb.optim.PagedAdamW8bit(
                params, lr=config.learning_rate, weight_decay=config.weight_decay
            )
            return opt, "paged_adamw_8bit"
        why = "no CUDA" if bnb is not None else "bitsandbytes not installed"
        name = "adamw"
        used = f"adamw (paged_adamw_8bit unavailable: {why})"
    else:
        used = str(name)
    if name == "adamw":
        opt = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        return opt, used
    if name == "rmsprop":
        opt = torch.optim.RMSprop(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        return opt, used
    raise ValueError(
        f"optimizer must be paged_adamw_8bit, adamw or rmsprop, not {config.optimizer!r}"
    )


def _scheduler(optimizer: Any, config: TrainConfig, total_steps: int) -> Any:
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    if config.lr_scheduler == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, max(total_steps, 1))
    if config.lr_scheduler == "constant":
        return get_constant_schedule_with_warmup(optimizer, config.warmup_steps)
    raise ValueError(f"lr_scheduler must be cosine or constant, not {config.lr_scheduler!r}")


def fit(
    policy: Any,
    config: TrainConfig,
    train_examples: Sequence[Example],
    heldout: Sequence[Example],
    images: Callable[[list[str]], list[Any]],
    out_dir: str | Path,
    resume: bool = False,
    fingerprint: dict[str, Any] | None = None,
    progress: Any = None,
    stop_after_epoch: int | None = None,
    log: Callable[[str], None] | None = None,
    rt: Runtime | None = None,
) -> FitResult:
    """Train ``policy.model`` (a peft model with a trainable adapter) on ``train_examples``.

    Saves the best epoch's adapter in ``out_dir`` and the resumable state in ``out_dir/state``.
    ``fingerprint`` (config, data hashes) must match the saved one to resume.
    ``stop_after_epoch`` ends the run early (to test resumption). ``rt``: this process's place
    in a launched run (learning/distributed.py); each process takes a share of every effective
    batch and of the held-out turns, and only the main one writes. The saved state does not
    depend on the process count, so a run resumes on any number of processes.
    """
    import torch
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    rt = rt or Runtime()
    out = Path(out_dir)
    state_dir = out / "state"
    state_dir.mkdir(parents=True, exist_ok=True)
    model = policy.model  # unwrapped: decoding, scoring without gradient, saving
    trained = rt.prepare(model)  # DDP around it when launched on several processes
    device, dtype = policy.device, policy.dtype
    dataset = ActionDataset(train_examples, config.shuffle_letters, config.seed)
    constrained = not isinstance(config, SUPConfig) and config.policy_prob == "constrained"
    collator = ActionCollator(policy, images, config.max_new_tokens, with_allowed=constrained)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, optimizer_used = _optimizer(params, config)
    steps_per_epoch = math.ceil(len(dataset) / config.effective_batch_size)
    scheduler = _scheduler(optimizer, config, steps_per_epoch * config.epochs)
    result = FitResult(optimizer=optimizer_used)
    start_epoch = 1
    fingerprint = fingerprint or {}
    mismatched = isinstance(config, KTOConfig) and config.kl_estimate == "mismatched"
    ref_table = (
        _stored_reference_table(
            state_dir, fingerprint, model, train_examples, collator, config, device, dtype, rt
        )
        if mismatched
        else {}
    )
    say = log or (lambda msg: logger.info(msg))

    if resume and (state_dir / "trainer.pt").is_file():
        saved = torch.load(state_dir / "trainer.pt", weights_only=False)
        if saved.get("fingerprint") != fingerprint:
            raise ValueError(f"{state_dir} was saved with another config or data: cannot resume")
        set_peft_model_state_dict(model, load_file(str(state_dir / "adapter.safetensors")))
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        _set_rng_state(saved["rng"])
        result.metrics = [EpochMetrics(**m) for m in saved["metrics"]]
        result.best_epoch, result.best_exact_match = saved["best_epoch"], saved["best_exact_match"]
        start_epoch = saved["epoch"] + 1
        result.resumed_from_epoch = saved["epoch"]
        say(f"resumed after epoch {saved['epoch']}")
    else:
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        if config.eval_before_training:
            em = _heldout_exact_match(policy, heldout, images, config, rt)
            result.metrics.append(EpochMetrics(0, None, em, 0, 0, 0.0, None, None))
            say(f"epoch 0 (before training): held-out exact match {_fmt(em)}")

    if rt.rank:  # other dropout masks than the main process's (which matches a plain run)
        torch.manual_seed(config.seed + 7919 * rt.rank + start_epoch)
    scale = rt.processes  # DDP averages gradients over processes: undo it, as if one summed
    task = None
    if progress is not None:
        task = progress.add_task("train", total=steps_per_epoch * config.epochs)
        progress.update(task, completed=steps_per_epoch * (start_epoch - 1))
    for epoch in range(start_epoch, config.epochs + 1):
        model.train()
        order = dataset.order(epoch)
        started = time.perf_counter()
        total_loss, seen, steps = torch.zeros((), device=device), 0, 0
        for k in range(0, len(order), config.effective_batch_size):
            group = order[k : k + config.effective_batch_size]
            mine = rt.share(group) if rt.distributed else group
            optimizer.zero_grad(set_to_none=True)
            z = None
            if mismatched:
                z = mismatched_reference_point(
                    model,
                    [dataset.sample(i, epoch) for i in mine],
                    ref_table,
                    collator,
                    config,
                    device,
                    dtype,
                    reduce=rt.sum if rt.distributed else None,
                )
            # a process without a share still runs one (zero-weighted) pass: DDP syncs on it
            passes = list(range(0, len(mine), config.micro_batch_size)) or [None]
            for m in passes:
                idx = group[:1] if m is None else mine[m : m + config.micro_batch_size]
                samples = [dataset.sample(i, epoch) for i in idx]
                with rt.no_sync(trained, sync=m == passes[-1]):
                    per_example = batch_losses(trained, collator(samples), config, device, dtype, z)
                    if m is None:
                        per_example = per_example * 0.0
                    loss = per_example.sum() * scale / len(group)  # scale 1: a plain run
                    loss.backward()
                if m is not None:
                    total_loss += per_example.detach().sum().float()  # no device sync per step
                    seen += len(samples)
            if config.max_grad_norm and config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            steps += 1
            if task is not None:
                progress.update(task, advance=1, description=f"train epoch {epoch}/{config.epochs}")
        if device.type == "cuda":
            torch.cuda.synchronize()
        if rt.distributed:  # the loss and example count over all processes
            summed = rt.sum(torch.stack([total_loss.double(), total_loss.new_tensor(seen).double()]))
            total_loss, seen = summed[0], int(summed[1].item())
        seconds = time.perf_counter() - started
        em = _heldout_exact_match(policy, heldout, images, config, rt)
        metrics = EpochMetrics(
            epoch=epoch,
            loss=float(total_loss) / seen if seen else None,
            heldout_exact_match=em,
            steps=steps,
            examples=seen,
            seconds=round(seconds, 3),
            examples_per_s=seen / seconds if seconds > 0 else None,
            learning_rate=scheduler.get_last_lr()[0],
        )
        result.metrics.append(metrics)
        adapter_state = {
            k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()
        }
        improved = result.best_epoch is None or (
            em is not None and (result.best_exact_match is None or em > result.best_exact_match)
        )
        if em is None:  # nothing to select on: keep the last epoch
            improved = True
        if improved:
            result.best_epoch, result.best_exact_match = epoch, em
        if rt.is_main:
            _save_epoch(model, out, improved, adapter_state, epoch, optimizer, scheduler, result,
                        fingerprint)  # fmt: skip
            say(
                f"epoch {epoch}: loss {_fmt(metrics.loss)}, held-out exact match {_fmt(em)}, "
                f"{_fmt(metrics.examples_per_s)} examples/s{' (best)' if improved else ''}"
            )
        rt.barrier()  # the state is on disk before any process goes on (or stops)
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < config.epochs:
            break
    return result


def _save_epoch(
    model: Any,
    out: Path,
    improved: bool,
    adapter_state: dict[str, Any],
    epoch: int,
    optimizer: Any,
    scheduler: Any,
    result: FitResult,
    fingerprint: dict[str, Any],
) -> None:
    """The best adapter (when this epoch improved) and the resumable state of ``out``."""
    import torch
    from safetensors.torch import save_file

    state_dir = out / "state"
    if improved:
        model.save_pretrained(str(out))
    save_file(adapter_state, str(state_dir / "adapter.safetensors"))
    torch.save(
        {
            "epoch": epoch,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(),
            "metrics": [dataclasses.asdict(x) for x in result.metrics],
            "best_epoch": result.best_epoch,
            "best_exact_match": result.best_exact_match,
            "fingerprint": fingerprint,
        },
        state_dir / "trainer.tmp",
    )
    (state_dir / "trainer.tmp").replace(state_dir / "trainer.pt")


def _heldout_exact_match(
    policy: Any,
    heldout: Sequence[Example],
    images: Callable[[list[str]], list[Any]],
    config: TrainConfig,
    rt: Runtime,
) -> float | None:
    """The held-out score; launched, each process decodes a share and the hits are summed."""

    def score(turns: Sequence[Example]) -> float | None:  # the one call of the held-out metric
        return heldout_metric(policy, turns, images, config)  # config.selection

    if not rt.distributed:
        return score(heldout)
    import torch

    mine = rt.share(heldout)
    em = score(mine)
    hits = round((em or 0.0) * len(mine))
    total = rt.sum(torch.tensor([hits, len(mine)], dtype=torch.float64, device=policy.device))
    return float(total[0] / total[1]) if total[1] else None


def _stored_reference_table(
    state_dir: Path,
    fingerprint: dict[str, Any],
    model: Any,
    examples: Sequence[Example],
    collator: Any,
    config: TrainConfig,
    device: Any,
    dtype: Any,
    rt: Runtime | None = None,
) -> dict[str, float]:
    """KTO's table of log π_ref(a′), stored in ``state_dir/kto_reference.json``: scored once,
    before any resumed state is loaded (by the adapter training starts from), and read back by
    a run with the same fingerprint, so a resumed run uses the very same reference. Launched,
    every process reads (or scores) it before the main one writes."""
    rt = rt or Runtime()
    path = state_dir / "kto_reference.json"
    keys = {e.key() for e in examples if not e.is_seed}
    table = None
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("fingerprint") == fingerprint and keys <= set(saved.get("table", {})):
            table = {k: float(v) for k, v in saved["table"].items()}
    rt.barrier()
    if table is not None:
        return table
    table = mismatched_reference_table(model, examples, collator, config, device, dtype)
    if rt.is_main:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"fingerprint": fingerprint, "table": table}, default=str))
        tmp.replace(path)
    return table


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.4f}"


# ---------------------------------------------------------------- the command


async def previous_adapter(db: Any, system: str, round_: int) -> str | None:
    """The adapter KTO continues from: the system's newest checkpoint of round ≤ ρ."""
    from sqlalchemy import select

    from app.db.models import Checkpoint

    async with db.session() as s:
        row = (
            await s.execute(
                select(Checkpoint.adapter)
                .where(
                    Checkpoint.system == system,
                    Checkpoint.round <= round_,
                    Checkpoint.adapter.is_not(None),
                )
                .order_by(Checkpoint.round.desc(), Checkpoint.created_at.desc())
                .limit(1)
            )
        ).scalar()
    return row


async def load_training_data(
    db: Any,
    system: str,
    round_: int,
    config: TrainConfig,
    renderer: Any = None,
    pi0: bool = False,
    deployed_probs: Any = None,
) -> tuple[list[Example], dict[str, Any], list[Example], dict[str, Any]]:
    """D≤ρ of the system's games plus the seed task (when ``seed_task``), and the held-out
    human turns. ``pi0``: the seed task alone (the initial policy π0). ``deployed_probs``:
    re-scored whole-action probabilities (see ``datasets.load_examples``)."""
    from learning.datasets import (
        DataStats,
        data_hash,
        load_examples,
        load_heldout,
        load_seed_examples,
    )

    if pi0 and not config.seed_task:
        raise ValueError("π0 is trained from the seed task alone: set seed_task = true")
    examples: list[Example] = []
    stats: dict[str, Any] = {}
    if not pi0:
        systems = None if config.data_systems == ["*"] else (config.data_systems or [system])
        examples, own = await load_examples(
            db,
            config.decoder,
            round_,
            systems=systems,
            include_unrounded=config.include_unrounded,
            decoder_version=config.decoder_version,
            prob="constrained" if config.policy_prob == "constrained" else "unconstrained",
            renderer=renderer,
            deployed_probs=deployed_probs,
        )
        stats = own.json()
    fraction = config.heldout_fraction if config.seed_task else None
    if config.seed_task:
        seed_examples, seed_stats = await load_seed_examples(
            db,
            round_,
            config.include_unrounded,
            config.seed,
            heldout_fraction=fraction,
            synthetic=config.seed_synthetic,
            drop_empty=bool(config.drop_empty_turns),
        )
        examples = [*examples, *seed_examples]
        stats["seed_task"] = seed_stats.json()
        if pi0:
            stats.update({k: v for k, v in seed_stats.json().items() if k != "sha256"})
        stats["sha256"] = data_hash(examples)
    elif not stats:
        stats = DataStats().json()
    heldout, hstats = await load_heldout(
        db,
        round_,
        config.include_unrounded,
        config.max_heldout_turns,
        config.seed,
        heldout_fraction=fraction,
        good_only=bool(config.heldout_good_only),
    )
    return examples, stats, heldout, hstats.json()


def train(
    database_url: str,
    system: str,
    round_: int,
    base: str,
    out_dir: str | Path,
    tangrams: str | Path,
    config: TrainConfig,
    init_adapter: str | Path | None = None,
    resume: bool = False,
    console: Any = None,
    stop_after_epoch: int | None = None,
    pi0: bool = False,
) -> dict[str, Any]:
    """Load D≤ρ (plus the seed task) and the held-out turns, train, and write the adapter and
    its manifest.json. ``pi0``: the initial policy, from the seed task alone, fresh adapter."""
    import torch

    from app.db.database import Database
    from policy_worker.gamedata import TangramImages
    from policy_worker.model import load_policy, resolve_device

    device = resolve_device(config.device)
    rt = runtime(device, resolve_dtype_name(config, device))
    device = rt.device  # launched: this process's own (cuda:LOCAL_RANK, or the CPU)
    if not rt.is_main:
        console = None
    say = console.print if console is not None else (lambda m: logger.info(m))
    if not rt.is_main:
        say = lambda m: None  # noqa: E731
    out = Path(out_dir)
    policy = load_policy(base, dtype=resolve_dtype_name(config, device), device=device)

    async def load() -> tuple[Any, ...]:
        db = Database(database_url)
        try:
            await db.migrate()
            from learning.rescore import load_deployed_probs

            # the whole action's re-scored probability (exp of the summed token log-probs), the
            # scale of π(a|x) in the RL weight and the KTO ratio; stored by the worker and by
            # `multiref rescore`; the newest score of each action wins
            deployed = await load_deployed_probs(db, whole_action=True)
            data = await load_training_data(
                db, system, round_, config, policy.processor, pi0, deployed_probs=deployed
            )
            prev = None
            if not pi0 and not starts_fresh(config) and init_adapter is None:
                prev = await previous_adapter(db, system, round_)
            return (*data, prev)
        finally:
            await db.close()

    examples, stats, heldout, hstats, prev = _main_loads(rt, lambda: asyncio.run(load()))
    init = None
    if not pi0 and not starts_fresh(config):
        init = str(init_adapter or prev or "")
        if not init:
            raise ValueError(
                f"{config.variant} continues from the previous round's adapter, and {system} has "
                f"no checkpoint with an adapter at round ≤ {round_}: pass --init-adapter"
            )
    train_examples, selection = select_examples(examples, config)
    if not train_examples and pi0:
        raise ValueError(
            "no seed-task examples: π0 needs ended human–human games in the database "
            "(play them, or import published games with `multiref import`)"
        )
    if not train_examples:
        systems = config.data_systems or [system]
        raise ValueError(
            f"no training examples for {config.variant} in D≤{round_} from the games of {systems} "
            f"({selection}); label them with `multiref retrospect --decoder {config.decoder}`, "
            "or set data_systems in the config"
        )
    say(
        f"{system} {'π0' if pi0 else f'round {round_}'} ({config.variant}, {config.profile} "
        f"profile): {selection['used']} training examples ({selection['seed']} from the seed "
        f"task, of {selection['available']}), {len(heldout)} held-out human turns, "
        f"{'fresh adapter' if init is None else 'continuing from ' + init}"
    )
    attach_adapter(policy, config, init)
    images = TangramImages(Path(tangrams)).images
    fingerprint = {
        "config": config.json(),
        "train_sha256": stats["sha256"],
        "selection": selection,
        "heldout_sha256": hstats["sha256"],
        "base": str(base),
        "init_adapter": init,
        "pi0": pi0,
    }
    progress = _progress(console)
    with progress:
        result = fit(
            policy,
            config,
            train_examples,
            heldout,
            images,
            out,
            resume=resume,
            fingerprint=fingerprint,
            progress=progress,
            stop_after_epoch=stop_after_epoch,
            log=say,
            rt=rt,
        )
    manifest = {
        "format": MANIFEST_FORMAT,
        "system": system,
        "round": round_,
        "variant": config.variant,
        "method": config.method,
        "decoder": config.decoder,
        "base": str(base),
        "init_adapter": init,
        "restart": init is None,
        "pi0": pi0,
        "profile": config.profile,
        "settings": applied_settings(config, result.optimizer, selection),
        "deviations_from_paper": deviations_from_paper(config),
        "config": config.json(),
        "data": {"train": {**stats, "selection": selection}, "heldout": hstats},
        **result.json(),
        "complete": result.metrics[-1].epoch == config.epochs if result.metrics else False,
        "created_at": time.time(),
        "versions": _versions(),
        "device": str(device),
        "dtype": str(policy.dtype).replace("torch.", ""),
        "processes": rt.processes,
        "mixed_precision": rt.mixed_precision,
        "examples_per_process_per_step": math.ceil(config.effective_batch_size / rt.processes),
    }
    if torch.cuda.is_available() and device.type == "cuda":
        manifest["gpu"] = torch.cuda.get_device_name(device)
    if rt.is_main:
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    rt.barrier()
    if not manifest["complete"]:
        say(f"stopped after epoch {result.metrics[-1].epoch}: run again with --resume to finish")
    return manifest


def applied_settings(
    config: TrainConfig, optimizer: str | None, selection: dict[str, int]
) -> dict[str, Any]:
    """Every docs/learning.md training setting as this run applied it (for the manifest)."""
    out: dict[str, Any] = {
        "profile": config.profile,
        "lora": {
            "r": config.lora_r,
            "alpha": config.lora_alpha,
            "dropout": config.lora_dropout,
            "targets": config.lora_targets,
            "init": config.lora_init,
        },
        "optimizer_requested": config.optimizer,
        "optimizer_ran": optimizer,
        "learning_rate": config.learning_rate,
        "lr_scheduler": config.lr_scheduler,
        "warmup_steps": config.warmup_steps,
        "weight_decay": config.weight_decay,
        "batch": f"{config.micro_batch_size} per pass, {config.effective_batch_size} per step",
        "epochs": config.epochs,
        "max_grad_norm": config.max_grad_norm,
        "seed": config.seed,
        "shuffle_letters": config.shuffle_letters,
        "policy_probability": config.policy_prob,
        "seed_task": config.seed_task,
        "seed_synthetic_turns": config.seed_synthetic,
        "seed_label_smoothing": config.seed_label_smoothing,
        "seed_examples_used": selection.get("seed", 0),
        "drop_empty_turns": config.drop_empty_turns,
        "dropped_empty": selection.get("dropped_empty", 0),
        "checkpoint_selection": config.selection,
        "heldout_good_only": config.heldout_good_only,
    }
    if isinstance(config, SUPConfig):
        out["loss"] = f"SUP: {1 - config.label_smoothing:g}·NLL/|a| + {config.label_smoothing:g}·S"
    elif isinstance(config, RLConfig):
        ls = config.label_smoothing
        out["loss"] = (
            f"RL: {1 - ls:g}·(−w·r·(1/|a|)Σlog p) + {ls:g}·|r|·S, w = p/max(p_dep, "
            f"{config.weight_floor:g}) for r ≤ 0"
        )
        out["rewards"] = config.rewards
        out["drop_neutral"] = config.drop_neutral
        out["dropped_neutral"] = selection.get("dropped_neutral", 0)
    elif isinstance(config, KTOConfig):
        ls = config.label_smoothing
        out["loss"] = f"KTO: {1 - ls:g}·KTO + {ls:g}·S, β {config.beta:g}"
        out["reference_floor"] = config.reference_floor
        out["kl_estimate"] = config.kl_estimate
    return out


def deviations_from_paper(config: TrainConfig) -> dict[str, dict[str, Any]]:
    """Config fields whose value differs from the paper profile's: {} for a paper run."""
    paper = type(config)(variant=config.variant, profile="paper")
    skip = {"variant", "profile", "device", "dtype"}
    return {
        f.name: {"value": getattr(config, f.name), "paper": getattr(paper, f.name)}
        for f in dataclasses.fields(config)
        if f.name not in skip and getattr(config, f.name) != getattr(paper, f.name)
    }


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def _progress(console: Any) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=console is None,
    )


def clean_state(out_dir: str | Path) -> None:
    """Remove the resumable state of a finished run (optimizer moments are large)."""
    shutil.rmtree(Path(out_dir) / "state", ignore_errors=True)


__all__ = [
    "CONFIGS",
    "KTOConfig",
    "RLConfig",
    "SUPConfig",
    "TrainConfig",
    "batch_losses",
    "exact_match",
    "fit",
    "load_config",
    "parse_variant",
    "select_examples",
    "starts_fresh",
    "train",
]
