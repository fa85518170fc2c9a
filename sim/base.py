"""The stand-in base model: a small Idefics2 built on the spot and briefly pre-trained.

The real loop needs a *pretrained* base: the feedback decoder is the base model without
adapter, and every round's adapter is trained on top of it. A random model can do neither, so
the simulation first makes a stand-in: the Idefics2 classes and chat template of
``HuggingFaceM4/idefics2-8b`` at a size a CPU trains in minutes (tangram silhouettes at 32 px,
one patch and 4 perceiver tokens per image, a 3-layer 128-wide Mistral text model, a BPE
tokenizer trained on the prompts and the crowd descriptions), with its connector initialised
so images get through (``_let_images_through``), pre-trained on

(a) simulated human–human listener turns (the policy prompt of ``policy_worker.prompt`` → the
    human listener's action). They describe the KiloGram tangrams OUTSIDE the study's pool with
    all their crowd descriptions, and each pool tangram with only ``pool_descriptions`` (2) of
    its own, in games of 2, 3, 5 and 10 images. The intent: the base learns the pointer task
    (description → image → letter) but grounds the study's own tangrams weakly, so the rounds
    have something to teach. As measured so far it does NOT learn the pointer task in the
    steps a 2-core budget allows (≤ 800 of 16: still chance, even between 2 images; see
    bench/README.md, "Simulated study"), so the loop has nothing to compound on yet;
(b) feedback-decoding examples built from simulated utterances (the decoder prompt of
    ``learning.retrospect`` → the word the utterance's wording means: positive / negative).

What it tells about the 8B model: that the loop's plumbing compounds — games, labels, data,
adapters and hot swaps feed the next round, and a listener that plays better gets better data —
and how decoder noise and data volume shape a learning curve. What it does not tell: the 8B
model's starting accuracy (the stand-in's is set by how little of the pool its pre-training
saw), its sample efficiency (a 1M-parameter model learning 12 tangrams is not an 8B model
learning 1,000), or how it reads real (not templated) feedback: the stand-in decoder learned
its labels from the same phrase lists the simulated speakers use.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from policy_worker.tiny import Idefics2Sizes

logger = logging.getLogger("multiref.sim")


@dataclass
class ModelSize(Idefics2Sizes):
    """Sizes of the stand-in Idefics2 (the defaults train a round in minutes on 2 cores)."""

    # A tangram silhouette at 32 px, one patch per image: the vision encoder costs almost
    # nothing (224 px in 32-px patches made a pre-training step 2.6x slower).
    # policy_worker.model.load_processor honours a checkpoint's own size when under 224 px.
    image_size: int = 32
    patch_size: int = 32
    vision_hidden: int = 64
    vision_layers: int = 2
    image_tokens: int = 4  # perceiver latents per image (64 in idefics2-8b)
    resampler_head_dim: int = 32
    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 4
    vocab_size: int = 1200
    # One matrix for reading words in and writing them out (as GPT-2 and Gemma do). Idefics2-8b
    # unties them; see bench/README.md, "Simulated study", for what tying changes here.
    tie_embeddings: bool = False
    seed: int = 0


@dataclass
class PretrainConfig:
    """The stand-in base's pre-training: steps of (a) listener turns and (b) decoder examples."""

    games: int = 400  # simulated human–human games to draw turns from
    # Listener turns come from the described tangrams OUTSIDE the study's pool, plus at most
    # ``pool_descriptions`` descriptions of each pool tangram (None: all of them): the base
    # learns the pointer task (description -> image -> letter) but grounds the study's own
    # tangrams only weakly, which leaves the rounds something to teach.
    pool_descriptions: int | None = 2
    # Images per simulated pre-training game: a listener with 2 images to choose from learns
    # to point (description -> image -> letter) from far fewer steps than with 10; the mix
    # carries it to the study's 10.
    context_sizes: tuple[int, ...] = (2, 3, 5, 10)
    # The vision encoder and connector stay at their random initialisation while pre-training:
    # their random features already tell the tangrams apart, and trained along with a text model
    # that cannot use them yet they collapse (every image the same 4 tokens after 400 steps,
    # measured) before the text model learns to point.
    freeze_vision: bool = True
    policy_steps: int = 400
    feedback_steps: int = 600
    # "mixed": the two kinds of step shuffled together under one schedule; "feedback-last": the
    # listener steps, then the decoder steps as a phase of their own (own warm-up and cosine,
    # at ``feedback_learning_rate``) with ``final_policy_steps`` listener steps shuffled in.
    # Measured offline (bench/decoder_probe.py; bench/README.md, stop 24), the stand-in trades
    # one task for the other: mixed, decoder FPR 20 % and the listener's held-out action loss
    # 0.91; the decoder steps alone last, FPR 0.5 % but the listener overwritten (loss 17); 20
    # listener steps among 600 decoder steps in the last phase, FPR 1.8 % and loss 1.63 (50:
    # 9.9 %, 1.13; 150 among 450: 24 %, 1.01). The last is the default: in the full study its
    # listener played as the mixed one did (click accuracy 38-41 %, at chance either way) and the
    # decoder's FPR fell from 17.9 % to 0.8 % (bench/README.md, stop 24).
    order: str = "feedback-last"
    feedback_learning_rate: float | None = None  # None: ``learning_rate``
    final_policy_steps: int = 20
    batch_size: int = 16
    learning_rate: float = 3e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.order not in ("mixed", "feedback-last"):
            raise ValueError(f"order must be mixed or feedback-last, not {self.order!r}")


def build_small_idefics2(out_dir: str | Path, corpus: list[str], size: ModelSize) -> Path:
    """A random small Idefics2 saved like a hub checkpoint (``load_policy`` loads it)."""
    from policy_worker.tiny import _CORPUS_LINES, build_idefics2, train_tokenizer

    tokenizer = train_tokenizer([*(_CORPUS_LINES * 20), *corpus], size.vocab_size, 2)
    return build_idefics2(out_dir, tokenizer, size, size.seed, prepare=_let_images_through)


def _let_images_through(model: Any) -> None:
    """Re-initialise the connector so a random stand-in can see its images at all.

    Idefics2's own initialisation (0.02-std weights, perceiver latents all ones) is made for
    loading pretrained weights: on a random model the latents swamp the image signal and every
    image comes out of the connector as the same 4 tokens (cosine similarity 1.000 between any
    two tangrams, measured), so no amount of listener pre-training can teach it to point. Weights
    at fan-in scale and small random latents keep the images apart (mean cosine 0.79)."""
    import torch

    connector = model.model.connector
    for module in connector.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, 0.0, 1.0 / math.sqrt(module.in_features))
    connector.perceiver_resampler.latents.data.normal_(0.0, 0.02)


# ---------------------------------------------------------------- pre-training data


def pretraining_descriptions(everything: Any, pool: list[str], per_pool_tangram: int | None, seed: int) -> Any:
    """What the stand-in's simulated human–human games describe: every described tangram
    outside the pool with all its descriptions, and each pool tangram with at most
    ``per_pool_tangram`` of its distinctive ones (None: all; 0: the pool left out)."""
    from sim.speakers import Descriptions

    rng = random.Random(seed)
    chosen: dict[str, list[str]] = {}
    for t in everything.tangrams:
        if t not in pool or per_pool_tangram is None:
            chosen[t] = everything.all[t]
        elif per_pool_tangram > 0:
            own = everything.distinctive[t]
            chosen[t] = rng.sample(own, min(per_pool_tangram, len(own)))
    return Descriptions(chosen)


@dataclass
class FeedbackExample:
    context: Any  # learning.retrospect.FeedbackContext
    word: str  # "positive" | "negative"
    # The sim.speakers.Utterance that reacts (its true label, what it said): for measuring the
    # decoder against the truth (bench/decoder_probe.py), never for training.
    reaction: Any = None


# A speaker who gives no feedback word still says "moving on" when the next message starts
# with one of these (the NEXT phrases of sim.speakers); anything else without a word is unsure.
MOVING_ON = ("next ", "now choose ", "all done")


def wording_label(utt: Any) -> str:
    """What the wording of a reaction says, as a reader of English takes it from the text alone:
    the feedback word, else an explicit move on (positive); a deselect, a repeat, a rephrase or
    a bare new description could each be a miss, so unsure → negative.

    Only the text decides (the speaker's hidden intent — same target or a new one — never does):
    the stand-in decoder learns what a reader could know, so its errors are a reader's errors.
    Labelling a silent bare description by that hidden intent taught the decoder a distinction
    the words do not carry, and it called misses good: 8.8 % false positives in the last study run,
    7.2 % offline against 1.7 % with these labels (bench/README.md, "Simulated study")."""
    if utt.said == "positive":
        return "positive"
    if utt.said in ("negative", "ambiguous"):
        return "negative"
    return "positive" if utt.text.startswith(MOVING_ON) else "negative"


def pretraining_data(
    descriptions, noise, games: int, seed: int, listener_accuracy: float = 0.85,
    context_sizes: tuple[int, ...] = (10,),
):
    """Simulated human–human games in memory: (listener turns as learning Examples, decoder
    examples). Each game: ``n`` tangrams (``n`` drawn from ``context_sizes``; the study's games
    show 10), about 40% of them targets, two independent image orders."""
    from learning.datasets import Example
    from learning.retrospect import FeedbackContext
    from policy_worker.prompt import PromptGame, PromptTurn, action_text, letter_map

    from sim.speakers import SimHumanListener, SimSpeaker, true_label

    rng = random.Random(seed)
    pool = descriptions.tangrams
    turns, feedback = [], []
    for g in range(games):
        n = rng.choice(context_sizes)
        context = rng.sample(pool, n)
        k = rng.randint(3, 5) if n == 10 else max(1, round(n * rng.uniform(0.3, 0.5)))
        targets = set(rng.sample(context, k))
        speaker_order, listener_order = rng.sample(context, n), rng.sample(context, n)
        letters = letter_map(listener_order)
        speaker = SimSpeaker(descriptions, noise, random.Random(rng.random()))
        listener = SimHumanListener(listener_accuracy, random.Random(rng.random()))
        selection: set[str] = set()
        before: set[str] | None = None
        history: list[PromptTurn] = []
        actions: list[str] = []
        utterances = []
        for turn in range(1, 11):
            tiles = [(t, t in selection, t in targets) for t in speaker_order]
            utt = speaker.speak(turn, tiles, before)
            utterances.append(utt)
            if turn > 1:
                prev = utterances[-2]
                feedback.append(
                    FeedbackExample(
                        FeedbackContext(
                            game_id=f"pre{g}",
                            turn=turn - 1,
                            previous_action=actions[-2] if len(actions) > 1 else None,
                            utterance=prev.text,
                            action=actions[-1],
                            next_utterance=utt.text,
                        ),
                        wording_label(utt),
                        utt,
                    )
                )
            after = listener.choose(listener_order, selection, utt)
            action = action_text(sorted(selection), sorted(after), letters)
            game = PromptGame(listener_order, [*history, PromptTurn(utt.text, sorted(selection), None)])
            if true_label(selection, after, targets) == 1:
                turns.append(Example(f"pre{g}", turn, game, action, 1, None, listener_kind="human"))
            history.append(PromptTurn(utt.text, sorted(selection), action))
            actions.append(action)
            before, selection = selection, after
            if selection == targets:
                break
    return turns, feedback


# ---------------------------------------------------------------- pre-training


def _token_loss(logits, targets, mask):
    import torch.nn.functional as F

    logp = F.log_softmax(logits.float(), -1)
    tok = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return -(tok * mask).sum() / mask.sum().clamp(min=1)


def step_plan(config: PretrainConfig, rng: random.Random) -> list[tuple[str, float]]:
    """(kind, learning rate) of every pre-training step: ``policy`` and ``feedback`` steps
    shuffled under one schedule (``mixed``), or the feedback steps as a last phase with a
    schedule of its own (``feedback-last``). Each schedule warms up over 20 steps, then falls
    to 0 along a cosine."""

    def schedule(lr: float, n: int) -> list[float]:
        return [lr * min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / n)) for s in range(n)]

    kinds = ["policy"] * config.policy_steps + ["feedback"] * config.feedback_steps
    if config.order == "mixed":
        rng.shuffle(kinds)
        return list(zip(kinds, schedule(config.learning_rate, len(kinds))))
    feedback_lr = config.feedback_learning_rate or config.learning_rate
    rehearsal = min(config.final_policy_steps, config.policy_steps)
    last = ["policy"] * rehearsal + ["feedback"] * config.feedback_steps
    rng.shuffle(last)
    return [
        *(("policy", lr) for lr in schedule(config.learning_rate, config.policy_steps - rehearsal)),
        *zip(last, schedule(feedback_lr, len(last))),
    ]


def feedback_loss(decoder: Any, rows: list[list[int]], label_lens: list[int], shared_prefix: bool = True) -> Any:
    """Token loss on the label word that ends each row (decoder prompt + label word), read
    through the decoder's own forward pass.

    Every decoder prompt starts with the same instructions (about 100 of ~140 tokens): they are
    encoded once and their keys and values shared by the batch (``shared_prefix``), as
    ``FeedbackDecoder`` reads its prompts — the same loss and gradients as encoding every row
    whole, for about a third of the tokens."""
    import torch

    keep = max(label_lens) + 1  # left-padded: only the label word's positions count
    p, cache = decoder._prefix(rows, reserve=keep) if shared_prefix else (0, None)
    logp = decoder._forward([r[p:] for r in rows], p, cache, keep, reuse_cache=False)
    dev = logp.device
    targets = torch.tensor([r[-(keep - 1) :] for r in rows], device=dev)
    mask = torch.tensor([[0.0] * (keep - 1 - k) + [1.0] * k for k in label_lens], device=dev)
    tok = logp[:, :-1].gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return -(tok * mask).sum() / mask.sum().clamp(min=1)


def pretrain(
    base_dir: Path,
    out_dir: Path,
    turns: list,
    feedback: list[FeedbackExample],
    images: Callable[[list[str]], list[Any]],
    config: PretrainConfig,
    progress: Any = None,
    device: str = "cpu",
) -> dict:
    """Full fine-tuning of the small model on both tasks (``config.order``); saves it to ``out_dir``."""
    import torch

    from learning.datasets import ActionCollator, augment, model_inputs
    from learning.retrospect import DecoderConfig, FeedbackDecoder, FeedbackTemplate
    from policy_worker.model import load_policy

    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    policy = load_policy(base_dir, dtype="float32", device=device)
    model = policy.model
    model.train()
    collator = ActionCollator(policy, images, with_allowed=False)
    decoder = FeedbackDecoder(policy, DecoderConfig("binary"), FeedbackTemplate.load(None, "binary"))
    tok = policy.tokenizer
    if config.freeze_vision:
        for module in (model.model.vision_model, model.model.connector):
            module.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.01)
    sizes: dict[int, list] = {}
    for e in turns:
        sizes.setdefault(len(e.game.listener_order), []).append(e)
    by_size = list(sizes.values())
    plan = step_plan(config, rng)
    task = progress.add_task("pre-train stand-in base", total=len(plan)) if progress else None
    losses = {"policy": [], "feedback": []}
    seconds = {"policy": 0.0, "feedback": 0.0}
    started = time.perf_counter()
    for kind, lr in plan:
        t0 = time.perf_counter()
        if kind == "policy" and turns:
            group = rng.choices(by_size, weights=[len(g) for g in by_size])[0]  # one image count a batch
            batch = collator([augment(e, rng) for e in rng.sample(group, min(config.batch_size, len(group)))])
            width = batch["targets"].shape[1]
            logits = model(
                **model_inputs(batch, policy.device, policy.dtype), logits_to_keep=width + 1
            ).logits  # only the action's positions: the output layer is the costly part
            dev = policy.device
            loss = _token_loss(
                logits[:, :-1], batch["targets"].to(dev), batch["target_mask"].float().to(dev)
            )
        elif feedback:
            chosen = rng.sample(feedback, min(config.batch_size, len(feedback)))
            prompts = [decoder.prompt(f.context) for f in chosen]
            label_ids = dict(zip(("positive", "negative"), decoder.label_token_ids(prompts[0])))
            rows = [tok(p)["input_ids"] + list(label_ids[f.word]) for p, f in zip(prompts, chosen)]
            loss = feedback_loss(decoder, rows, [len(label_ids[f.word]) for f in chosen])
        else:
            continue
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        losses[kind].append(loss.item())
        seconds[kind] += time.perf_counter() - t0
        if task is not None:
            progress.update(task, advance=1, description=f"pre-train ({kind} loss {losses[kind][-1]:.3f})")
    model.eval()
    out = Path(out_dir)
    model.save_pretrained(out)
    policy.processor.save_pretrained(out)

    def tail(xs):
        return sum(xs[-20:]) / max(1, len(xs[-20:])) if xs else None

    info = {
        "config": asdict(config),
        "policy_examples": len(turns),
        "feedback_examples": len(feedback),
        "final_policy_loss": tail(losses["policy"]),
        "final_feedback_loss": tail(losses["feedback"]),
        "seconds": round(time.perf_counter() - started, 1),
        "seconds_by_kind": {k: round(v, 1) for k, v in seconds.items()},
    }
    (out / "pretraining.json").write_text(json.dumps(info, indent=2))
    return info
