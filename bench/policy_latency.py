"""Policy latency and throughput: batched decoding against one-at-a-time, same run.

    .venv/bin/python bench/policy_latency.py                       # tiny model on the CPU
    .venv/bin/python bench/policy_latency.py --device cuda --full-size   # 8B-shaped, random weights

At each concurrency c, c listener turns arrive together (10 images, 5 turns of history). The
batched server decodes them in one batch; the one-at-a-time server decodes them in turn, so
later turns wait. Latency is from arrival to the turn's action; throughput is turns per second.
Targets on one H100 in bf16 (full size): p50 under 250 ms at concurrency 1, at least 30
actions/s at concurrency 32.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from bench.tables import Console, Table  # noqa: E402  (plain text without rich)

from policy_worker.decoding import DecodeRequest, decode_actions  # noqa: E402
from policy_worker.prompt import PromptGame, PromptTurn, legal_actions, letter_map  # noqa: E402

UTTERANCES = [
    "choose the bird with open wings",
    "yes, now the person sitting down",
    "no, undo that. the boat with the tall sail",
    "correct. pick the letter E turned on its side",
    "not that one. the double archway on the left",
    "good. now the hook on top of the small triangle",
]


def tangram_images(count: int, seed: int):
    """Real KiloGram pictures when the reference copy is there, else the built-in set."""
    from app.tangrams.render import render_png

    ref = ROOT.parent / "shared" / "reference" / "kilogram" / "tangrams-svg"
    rng = random.Random(seed)
    if ref.is_dir():
        files = sorted(ref.glob("*.svg"))
        return [render_png(p) for p in rng.sample(files, count)]
    from app.tangrams.builtin import generate_set

    svgs = list(generate_set(count, seed=seed).values())
    return [render_png(s) for s in svgs]


def make_request(rng: random.Random, images, history: int, temperature: float) -> DecodeRequest:
    order = [f"t{i}" for i in range(10)]
    letters = letter_map(order)
    selected: set[str] = set()
    turns = []
    for t in range(history + 1):
        action = None
        before = sorted(selected)
        if t < history:
            action = rng.choice(legal_actions(sorted(letters[x] for x in selected))[:200])
            for word in action.split():
                if len(word) == 1:
                    tid = order["ABCDEFGHIJ".index(word)]
                    selected ^= {tid}
        turns.append(PromptTurn(utterance=rng.choice(UTTERANCES), selection_before=before, action=action))
    game = PromptGame(listener_order=order, turns=turns)
    return DecodeRequest.for_game(game, images, temperature=temperature, seed=rng.randrange(1 << 30))


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(q / 100 * (len(values) - 1))))
    return values[k]


def run(policy, requests: list[DecodeRequest], concurrency: int, rounds: int, batched: bool, sync) -> dict:
    latencies: list[float] = []
    served = 0
    wall = 0.0
    for r in range(rounds):
        batch = requests[r * concurrency : (r + 1) * concurrency]
        sync()
        start = time.perf_counter()
        if batched:
            results = decode_actions(policy, batch, max_batch_size=concurrency)
            sync()
            latencies += [res.latency_s for res in results]
        else:
            for req in batch:
                decode_actions(policy, [req], max_batch_size=1)
                sync()
                latencies.append(time.perf_counter() - start)  # queued behind earlier turns
        wall += time.perf_counter() - start
        served += len(batch)
    return {
        "p50": statistics.median(latencies) * 1000,
        "p95": percentile(latencies, 95) * 1000,
        "throughput": served / wall,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--full-size", action="store_true", help="8B-shaped Idefics2 with random weights")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--rounds", type=int, default=3, help="arrivals of c turns per measurement")
    ap.add_argument("--history", type=int, default=5, help="turns of dialogue before the current one")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    console = Console()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    from policy_worker.tiny import build_tiny_idefics2

    tiny_dir = build_tiny_idefics2(Path(tempfile.mkdtemp()) / "tiny")
    if args.full_size:
        from policy_worker.fullsize import build_random_8b

        policy = build_random_8b(tiny_dir, device=args.device, dtype=dtype)
    else:
        from policy_worker.model import load_policy

        policy = load_policy(tiny_dir, dtype=dtype, device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    rng = random.Random(0)
    images = tangram_images(10, seed=0)
    need = max(args.concurrency) * args.rounds
    requests = [make_request(rng, images, args.history, args.temperature) for _ in range(need)]
    run(policy, requests[:2], 1, 2, True, sync)  # warm-up (kernels, caches)
    n_prompt = decode_actions(policy, requests[:1])[0].num_prompt_tokens

    name = "Idefics2 8B-shaped, random weights" if args.full_size else "tiny Idefics2"
    table = Table(title=f"policy latency — {name}, {args.device} {dtype}, prompt {n_prompt} tokens")
    for col in ("concurrency", "mode", "p50 ms", "p95 ms", "actions/s", "batched / one-at-a-time"):
        table.add_column(col, justify="right")
    for c in args.concurrency:
        seq = run(policy, requests, c, args.rounds, False, sync)
        bat = run(policy, requests, c, args.rounds, True, sync)
        table.add_row(str(c), "one-at-a-time", f"{seq['p50']:.0f}", f"{seq['p95']:.0f}", f"{seq['throughput']:.1f}", "1.00")
        table.add_row(
            str(c), "batched", f"{bat['p50']:.0f}", f"{bat['p95']:.0f}", f"{bat['throughput']:.1f}",
            f"{bat['throughput'] / seq['throughput']:.2f}× actions/s",
        )
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
