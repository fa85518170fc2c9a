"""Training a system's next checkpoint on D≤ρ: SUP, RL and KTO (MULTIREF.md §5).

A system name says its variant: ``B-SUP`` is the binary decoder's labels with the supervised
loss, ``T-KTO`` the ternary decoder's with KTO, and so on (a config's ``variant`` key names it
for other system names). One config dataclass per method holds every knob with the defaults of
§5; a TOML or JSON file overrides them (top-level keys for all methods, a ``[sup]`` / ``[rl]`` /
``[kto]`` table for one)::

    epochs = 10
    micro_batch_size = 8
    [kto]
    beta = 0.3

Restart vs continue: SUP and RL start each round from the base model with a fresh adapter; KTO
continues from the previous round's adapter (the system's newest checkpoint of round ≤ ρ, or
``--init-adapter``). The epoch kept is the one with the best exact match on held-out
human–human turns. Each epoch saves the adapter, optimiser, scheduler and random states under
``OUT/state`` so ``--resume`` continues an interrupted run where it stopped.
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
from typing import Any

from learning import losses
from learning.datasets import ActionCollator, ActionDataset, Example, model_inputs
from learning.evaluate import heldout_metric

logger = logging.getLogger("multiref.learning")

METHODS = ("sup", "rl", "kto")
DECODER_OF_PREFIX = {"B": "binary", "T": "ternary"}
MANIFEST_FORMAT = "multiref-adapter/1"


# ---------------------------------------------------------------- configs


@dataclass
class TrainConfig:
    """Shared defaults (MULTIREF.md §5). Method configs below add their own fields."""

    variant: str = ""  # e.g. "B-SUP"; empty: read from the system name
    # LoRA on the text model's attention and MLP projections
    lora_r: int = 8
    lora_alpha: int = 8
    lora_dropout: float = 0.1
    lora_targets: str = (
        r".*text_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
    )
    init: str = ""  # fresh | previous; empty: the method's rule (SUP, RL fresh; KTO previous)
    # optimisation
    optimizer: str = "adamw"  # adamw | rmsprop
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"  # cosine | constant
    warmup_steps: int = 10
    epochs: int = 20
    effective_batch_size: int = 64  # examples per optimiser step (gradient accumulation)
    micro_batch_size: int = 4  # examples per forward pass
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
    policy_prob: str = "constrained"  # constrained (prob_action) | unconstrained
    max_new_tokens: int = 10  # the deployed decoding budget (for the constrained steps)
    # model selection
    selection: str = "sample"  # sample (T=1, no grammar: §8) | greedy (grammar exact match)
    max_heldout_turns: int = 500
    eval_batch_size: int = 16
    eval_before_training: bool = True

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
    """B-RL / T-RL: REINFORCE with rewards per label and importance weights for non-positives."""

    reward_positive: float = 1.0
    reward_neutral: float = 0.0
    reward_negative: float = -0.1
    weight_floor: float = 0.01  # the importance weight's denominator is at least this

    @property
    def rewards(self) -> dict[int, float]:
        return {1: self.reward_positive, 0: self.reward_neutral, -1: self.reward_negative}


@dataclass
class KTOConfig(TrainConfig):
    """B-KTO / T-KTO: positives desirable, negatives undesirable, reference = stored probs."""

    beta: float = 0.5
    optimizer: str = "rmsprop"
    learning_rate: float = 1e-5
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    kl_estimate: str = "batch"  # batch: z from the batch's log-ratios | zero
    # The reference is the deployed prompt's probability: shuffled letters would compare the
    # policy on another prompt with it, so KTO trains on the prompts as played by default.
    shuffle_letters: bool = False


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
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.lora_targets,
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
    model: Any, batch: dict[str, Any], config: TrainConfig, device: Any, dtype: Any
) -> Any:
    """Per-example losses [B] of the config's method on a collated batch."""
    import torch

    targets = batch["targets"].to(device)
    mask = batch["target_mask"].to(device)
    width = targets.shape[1]
    out = model(**model_inputs(batch, device, dtype), logits_to_keep=width + 1)
    logits = out.logits[:, :-1]  # position j predicts action token j
    if isinstance(config, SUPConfig):
        lp, mean_lp = losses.token_logps(logits, targets)
        return losses.sup_loss(lp, mean_lp, mask, config.label_smoothing)
    lp = policy_token_logps(logits, batch, config, device)
    labels = batch["labels"].to(device)
    deployed = batch["deployed_probs"].to(device=device, dtype=torch.float32)
    seq = losses.sequence_logps(lp, mask, normalise=False)
    if isinstance(config, RLConfig):
        norm = losses.sequence_logps(lp, mask, normalise=True)
        w = losses.importance_weights(seq, deployed, labels == 1, config.weight_floor)
        return losses.rl_loss(norm, losses.rewards_for(labels, config.rewards), w)
    if isinstance(config, KTOConfig):
        ref = torch.log(deployed.clamp(min=1e-30))
        kl = losses.kto_reference_point(seq, ref) if config.kl_estimate == "batch" else 0.0
        return losses.kto_loss(
            seq,
            ref,
            labels == 1,
            kl,
            config.beta,
            config.desirable_weight,
            config.undesirable_weight,
        )
    raise TypeError(f"no loss for {type(config).__name__}")


def policy_token_logps(logits: Any, batch: dict[str, Any], config: TrainConfig, device: Any) -> Any:
    """log π per action token, constrained (as decoding sampled) or over the whole vocabulary."""
    import torch

    targets = batch["targets"].to(device)
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
    """What each method trains on: SUP positives; RL every label; KTO ±1 with a stored prob."""
    if isinstance(config, SUPConfig):
        kept = [e for e in examples if e.label == 1]
    elif isinstance(config, KTOConfig):
        kept = [e for e in examples if e.label in (1, -1) and e.prob is not None]
    else:
        kept = list(examples)
    return kept, {
        "available": len(examples),
        "used": len(kept),
        "dropped": len(examples) - len(kept),
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

    def json(self) -> dict[str, Any]:
        return {
            "metrics": [dataclasses.asdict(m) for m in self.metrics],
            "best_epoch": self.best_epoch,
            "best_exact_match": self.best_exact_match,
            "resumed_from_epoch": self.resumed_from_epoch,
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


def _optimizer(params: list[Any], config: TrainConfig) -> Any:
    import torch

    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=config.learning_rate, weight_decay=config.weight_decay
        )
    raise ValueError(f"optimizer must be adamw or rmsprop, not {config.optimizer!r}")


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
) -> FitResult:
    """Train ``policy.model`` (a peft model with a trainable adapter) on ``train_examples``.

    Saves the best epoch's adapter in ``out_dir`` and the resumable state in ``out_dir/state``.
    ``fingerprint`` (config, data hashes) must match the saved one to resume.
    ``stop_after_epoch`` ends the run early (to test resumption).
    """
    import torch
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    out = Path(out_dir)
    state_dir = out / "state"
    state_dir.mkdir(parents=True, exist_ok=True)
    model = policy.model
    device, dtype = policy.device, policy.dtype
    dataset = ActionDataset(train_examples, config.shuffle_letters, config.seed)
    constrained = not isinstance(config, SUPConfig) and config.policy_prob == "constrained"
    collator = ActionCollator(policy, images, config.max_new_tokens, with_allowed=constrained)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(params, config)
    steps_per_epoch = math.ceil(len(dataset) / config.effective_batch_size)
    scheduler = _scheduler(optimizer, config, steps_per_epoch * config.epochs)
    result = FitResult()
    start_epoch = 1
    fingerprint = fingerprint or {}
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
            em = heldout_metric(policy, heldout, images, config)  # config.selection (§8)
            result.metrics.append(EpochMetrics(0, None, em, 0, 0, 0.0, None, None))
            say(f"epoch 0 (before training): held-out exact match {_fmt(em)}")

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
            optimizer.zero_grad(set_to_none=True)
            for m in range(0, len(group), config.micro_batch_size):
                samples = [dataset.sample(i, epoch) for i in group[m : m + config.micro_batch_size]]
                per_example = batch_losses(model, collator(samples), config, device, dtype)
                loss = per_example.sum() / len(group)
                loss.backward()
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
        seconds = time.perf_counter() - started
        em = heldout_metric(policy, heldout, images, config)  # config.selection (§8)
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
        say(
            f"epoch {epoch}: loss {_fmt(metrics.loss)}, held-out exact match {_fmt(em)}, "
            f"{_fmt(metrics.examples_per_s)} examples/s{' (best)' if improved else ''}"
        )
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < config.epochs:
            break
    return result


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
    db: Any, system: str, round_: int, config: TrainConfig, renderer: Any = None
) -> tuple[list[Example], dict[str, Any], list[Example], dict[str, Any]]:
    from learning.datasets import load_examples, load_heldout

    systems = None if config.data_systems == ["*"] else (config.data_systems or [system])
    examples, stats = await load_examples(
        db,
        config.decoder,
        round_,
        systems=systems,
        include_unrounded=config.include_unrounded,
        decoder_version=config.decoder_version,
        prob=config.policy_prob,
        renderer=renderer,
    )
    heldout, hstats = await load_heldout(
        db, round_, config.include_unrounded, config.max_heldout_turns, config.seed
    )
    return examples, stats.json(), heldout, hstats.json()


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
) -> dict[str, Any]:
    """Load D≤ρ and the held-out turns, train, and write the adapter and its manifest.json."""
    import torch

    from app.db.database import Database
    from policy_worker.gamedata import TangramImages
    from policy_worker.model import load_policy, resolve_device

    say = console.print if console is not None else (lambda m: logger.info(m))
    out = Path(out_dir)
    device = resolve_device(config.device)
    policy = load_policy(base, dtype=resolve_dtype_name(config, device), device=device)

    async def load() -> tuple[Any, ...]:
        db = Database(database_url)
        try:
            await db.migrate()
            data = await load_training_data(db, system, round_, config, policy.processor)
            prev = None
            if not starts_fresh(config) and init_adapter is None:
                prev = await previous_adapter(db, system, round_)
            return (*data, prev)
        finally:
            await db.close()

    examples, stats, heldout, hstats, prev = asyncio.run(load())
    init = None
    if not starts_fresh(config):
        init = str(init_adapter or prev or "")
        if not init:
            raise ValueError(
                f"{config.variant} continues from the previous round's adapter, and {system} has "
                f"no checkpoint with an adapter at round ≤ {round_}: pass --init-adapter"
            )
    train_examples, selection = select_examples(examples, config)
    if not train_examples:
        systems = config.data_systems or [system]
        raise ValueError(
            f"no training examples for {config.variant} in D≤{round_} from the games of {systems} "
            f"({selection}); label them with `multiref retrospect --decoder {config.decoder}`, "
            "or set data_systems in the config"
        )
    say(
        f"{system} round {round_} ({config.variant}): {selection['used']} training examples "
        f"(of {selection['available']} decoded), {len(heldout)} held-out human turns, "
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
        "config": config.json(),
        "data": {"train": {**stats, "selection": selection}, "heldout": hstats},
        **result.json(),
        "complete": result.metrics[-1].epoch == config.epochs if result.metrics else False,
        "created_at": time.time(),
        "versions": _versions(),
        "device": str(device),
        "dtype": str(policy.dtype).replace("torch.", ""),
    }
    if torch.cuda.is_available() and device.type == "cuda":
        manifest["gpu"] = torch.cuda.get_device_name(device)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    if not manifest["complete"]:
        say(f"stopped after epoch {result.metrics[-1].epoch}: run again with --resume to finish")
    return manifest


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
