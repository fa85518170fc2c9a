"""Learning-loop throughput: retrospection (actions/s) and SUP training (examples/s).

    .venv/bin/python bench/loop_throughput.py                              # tiny model on the CPU
    .venv/bin/python bench/loop_throughput.py --device cuda --full-size  # 8B-shaped, random

Retrospection runs the feedback decoder (base model, text only, binary template, batched, shared
instruction prefix) over the listener actions of the 100 recorded games in
``../shared/reference/respect_games`` (replayed in memory through the rules engine). Training
runs ``learning.train.fit`` for one epoch of B-SUP (LoRA r 8 on the text model) over the same
games' turns with their 10 tangram images.

``--full-size`` builds Idefics2 with the idefics2-8b shapes (Mistral-7B text model, SigLIP-so400m
vision encoder, 64-latent perceiver; ``policy_worker.fullsize.idefics2_8b_config``) directly in
bf16 on the meta device, then materialises it on the GPU with random weights: nothing is
downloaded. Its tokenizer is the tiny model's, which cuts English into about twice as many
tokens as Mistral's does, and splits the label words (" positive", " negative"), which Mistral's
tokenizer keeps whole: the decoder is therefore timed on its first-token path, the one the real
tokenizer takes, and the table reports tokens per prompt so the numbers can be scaled.

Targets on one H100 (full size, bf16): retrospection ≥ 500 actions/s, SUP training ≥ 10
examples/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from bench.tables import Console, Table  # noqa: E402  (plain text without rich)

REFERENCE = ROOT.parent / "shared" / "reference"
TARGETS = {"retrospection": 500.0, "training": 10.0}  # one H100, full size


# ---------------------------------------------------------------- models


@torch.no_grad()
def random_idefics2_8b(
    tiny_dir: Path, device: str = "cuda", dtype: str = "bfloat16", seed: int = 0
):
    """The 8B-shaped Idefics2 with random weights: built in ``dtype`` on the meta device (no
    memory), then materialised on ``device`` and initialised (normal(0, 0.02) matrices, unit
    norm weights, zero biases; rotary frequencies recomputed in float32)."""
    from transformers import Idefics2ForConditionalGeneration

    from policy_worker.fullsize import IMAGE_SEQ_LEN, idefics2_8b_config
    from policy_worker.model import LoadedPolicy, load_processor, resolve_device, resolve_dtype

    processor = load_processor(tiny_dir)
    processor.image_seq_len = IMAGE_SEQ_LEN  # 64 image tokens per image, as idefics2-8b
    tok = processor.tokenizer
    config = idefics2_8b_config(tok.convert_tokens_to_ids("<image>"), tok.pad_token_id or 0)
    dev, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    with torch.device("meta"):
        model = Idefics2ForConditionalGeneration._from_config(config, dtype=torch_dtype)
    model = model.to_empty(device=dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim == 1:
            p.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
        else:
            p.normal_(0.0, 0.02, generator=gen)
    for module in model.modules():  # non-persistent buffers: to_empty left them uninitialised
        if hasattr(module, "inv_freq") and hasattr(module, "compute_default_rope_parameters"):
            inv_freq, _ = module.compute_default_rope_parameters(module.config, device=dev)
            module.inv_freq = inv_freq.float()
            module.original_inv_freq = inv_freq.float().clone()
    model.eval()
    return LoadedPolicy(
        model=model, processor=processor, base="random-idefics2-8b", device=dev, dtype=torch_dtype
    )


def load_models(args, tiny_dir: Path):
    from policy_worker.model import load_policy

    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.full_size:
        return lambda: random_idefics2_8b(tiny_dir, args.device, dtype), dtype
    return lambda: load_policy(tiny_dir, dtype=dtype, device=args.device), dtype


# ---------------------------------------------------------------- data


def recorded_states(limit: int):
    """The recorded games replayed in memory through the rules engine (no database)."""
    from app.game import rules as R

    path = REFERENCE / "respect_games" / "sep_12_24_sample.jsonl"
    if not path.is_file():
        raise SystemExit(f"reference games not found at {path}")
    states = []
    for line in path.read_text().splitlines()[:limit]:
        g = json.loads(line)
        config = R.GameConfig(
            context=tuple(sorted(g["speaker_order"])),
            targets=tuple(sorted(g["targets"])),
            speaker_order=tuple(g["speaker_order"]),
            listener_order=tuple(g["listener_order"]),
        )
        t = 0.0
        state = R.new_game(
            R.GameCreated(
                game_id=g["game_id"],
                config=config,
                rules=R.GameRules(),
                listener_kind=R.ListenerKind.MODEL,
                at=t,
            )
        )
        state, _ = R.step(state, R.Join(seat=R.Seat.SPEAKER, at=t))
        for text, selection in zip(g["utterances"], g["selection_after_turn"]):
            t += 10
            state, _ = R.step(state, R.SendUtterance(seat=R.Seat.SPEAKER, text=text, at=t))
            for tid in sorted(set(state.selection) ^ set(selection)):
                state, _ = R.step(state, R.Click(seat=R.Seat.LISTENER, tangram_id=tid, at=t))
            state, _ = R.step(state, R.Submit(seat=R.Seat.LISTENER, at=t))
        states.append(state)
    return states


def contexts_of(states, n: int):
    from learning.retrospect import feedback_contexts

    out = [c for s in states for c in feedback_contexts(s)]
    while len(out) < n:
        out += out
    return out[:n]


def examples_of(states, n: int):
    from learning.datasets import Example
    from policy_worker.gamedata import prompt_game

    out = []
    for s in states:
        for record in s.turns:
            full = prompt_game(s, record.turn, include_action=True)
            out.append(
                Example(
                    f"{s.game_id}",
                    record.turn,
                    prompt_game(s, record.turn),
                    str(full.turns[-1].action),
                    1,
                    0.5,
                )
            )
    while len(out) < n:
        out += out
    return [
        Example(f"{e.game_id}-{i}", e.turn, e.game, e.action, 1, 0.5) for i, e in enumerate(out[:n])
    ]


# ---------------------------------------------------------------- measurements


def sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_retrospection(
    policy, contexts, batch_size: int, device: str, emulate_single_token: bool
) -> dict:
    from learning.retrospect import (
        DecoderConfig,
        FeedbackDecoder,
        FeedbackTemplate,
        common_prefix_len,
    )

    decoder = FeedbackDecoder(
        policy,
        DecoderConfig("binary", "margin", batch_size=batch_size),  # the label-word scoring path
        FeedbackTemplate.load(None, "binary"),
    )
    prompts = [decoder.prompt(c) for c in contexts[:64]]
    if emulate_single_token:
        # Mistral's tokenizer has "▁positive" and "▁negative" as single tokens: time that path.
        pos, neg = decoder.label_token_ids(prompts[0])
        j = next(i for i, (a, b) in enumerate(zip(pos, neg)) if a != b)
        decoder.label_ids = [(pos[j],), (neg[j],)]  # two distinct single tokens stand in
    decoder.decide(contexts[: min(len(contexts), 2 * batch_size)])  # warm-up
    sync(device)
    start = time.perf_counter()
    decisions = decoder.decide(contexts)
    sync(device)
    seconds = time.perf_counter() - start
    encoded = [policy.tokenizer(p)["input_ids"] for p in prompts]
    tokens = sum(map(len, encoded)) / len(encoded)
    shared = common_prefix_len(encoded)  # encoded once per run (prefix cache)
    scoring = decisions[0].scores.get("scoring")
    return {
        "shared": shared,
        "rate": len(contexts) / seconds,
        "n": len(contexts),
        "seconds": seconds,
        "tokens": tokens,
        "scoring": scoring,
    }


def bench_training(policy, examples, images, micro: int, device: str) -> dict:
    from learning.train import SUPConfig, attach_adapter, fit

    config = SUPConfig(
        variant="B-SUP",
        epochs=1,
        micro_batch_size=micro,
        effective_batch_size=micro * 4,
        warmup_steps=0,
        eval_before_training=False,
        device=device,
    )
    attach_adapter(policy, config, None)
    out = Path(tempfile.mkdtemp(prefix="loop-bench-"))
    fit(
        policy, config, examples[: micro * 4], [], images, out / "warmup"
    )  # warm-up (kernels, caches)
    result = fit(policy, config, examples, [], images, out / "run")
    m = result.metrics[-1]
    from learning.datasets import ActionCollator, augment

    batch = ActionCollator(policy, images)([augment(e, None) for e in examples[:8]])
    tokens = float(batch["attention_mask"].sum(-1).float().mean())
    return {"rate": m.examples_per_s, "n": m.examples, "seconds": m.seconds, "tokens": tokens}


def image_source():
    from policy_worker.gamedata import TangramImages

    folder = REFERENCE / "kilogram" / "tangrams-svg"
    if not folder.is_dir():
        raise SystemExit(f"tangrams not found at {folder}")
    return TangramImages(folder).images


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument(
        "--full-size", action="store_true", help="8B-shaped Idefics2 with random weights"
    )
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    ap.add_argument(
        "--actions", type=int, default=None, help="actions to label (default 588 tiny, 2400 full)"
    )
    ap.add_argument(
        "--examples", type=int, default=None, help="training examples (default 32 tiny, 256 full)"
    )
    ap.add_argument(
        "--batch-size", type=int, default=None, help="decoder batch (default 32 tiny, 128 full)"
    )
    ap.add_argument(
        "--micro-batch",
        type=int,
        default=None,
        help="training micro-batch (default 4; 8 may fit on 80 GB)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--skip", choices=("retrospection", "training"), default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    full = args.full_size
    actions = args.actions or (2400 if full else 588)
    n_examples = args.examples or (256 if full else 32)
    batch_size = args.batch_size or (128 if full else 32)
    micro = args.micro_batch or 4
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    from policy_worker.tiny import build_tiny_idefics2

    tiny_dir = build_tiny_idefics2(Path(tempfile.mkdtemp()) / "tiny")
    make_policy, dtype = load_models(args, tiny_dir)
    states = recorded_states(100)
    rows = {}
    if args.skip != "retrospection":
        policy = make_policy()
        rows["retrospection"] = bench_retrospection(
            policy, contexts_of(states, actions), batch_size, args.device, full
        )
        del policy
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    if args.skip != "training":
        policy = make_policy()
        rows["training"] = bench_training(
            policy, examples_of(states, n_examples), image_source(), micro, args.device
        )
    name = "Idefics2 8B-shaped, random weights" if full else "tiny Idefics2"
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    table = Table(title=f"learning loop throughput — {name}, {device_name} {dtype}")
    for col in (
        "stage",
        "rate",
        "items",
        "seconds",
        "tokens / prompt",
        "batch",
        "target (H100, full)",
    ):
        table.add_column(col, justify="right")
    if "retrospection" in rows:
        r = rows["retrospection"]
        table.add_row(
            f"retrospection ({r['scoring']})",
            f"{r['rate']:.1f} actions/s",
            str(r["n"]),
            f"{r['seconds']:.2f}",
            f"{r['tokens']:.0f} ({r['shared']} shared)",
            str(batch_size),
            f"≥ {TARGETS['retrospection']:.0f} actions/s",
        )
    if "training" in rows:
        r = rows["training"]
        table.add_row(
            "SUP training (fwd+bwd+step)",
            f"{r['rate']:.1f} examples/s",
            str(r["n"]),
            f"{r['seconds']:.2f}",
            f"{r['tokens']:.0f}",
            f"{micro} × 4",
            f"≥ {TARGETS['training']:.0f} examples/s",
        )
    console.print(table)
    if args.json:
        args.json.write_text(
            json.dumps({"device": device_name, "dtype": dtype, "full_size": full, **rows}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
