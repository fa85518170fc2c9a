"""A two-process smoke run of ``learning.train.fit`` under ``accelerate launch`` (no database).

    accelerate launch --multi_gpu --num_processes 2 bench/train_smoke.py --device cuda
    accelerate launch --multi_gpu --num_processes 2 bench/train_smoke.py --device cpu  # gloo

Each process builds the same tiny Idefics2 and the same synthetic SUP examples, trains two
epochs with an effective batch split over the processes, and the main process prints one line:
the process count, the loss per epoch and examples/s. Exits 1 unless the run was launched on
more than one process and the loss is finite (bench/gpu_check.sh runs it when ≥ 2 GPUs).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (one GPU per process) or cpu (gloo)")
    ap.add_argument("--examples", type=int, default=24)
    ap.add_argument("--out", type=Path, default=None, help="default: a temporary folder")
    args = ap.parse_args(argv)

    import torch

    from learning.datasets import Example
    from learning.distributed import runtime
    from learning.train import SUPConfig, attach_adapter, fit
    from policy_worker.model import load_policy, resolve_device
    from policy_worker.prompt import PromptGame, PromptTurn
    from policy_worker.tiny import build_tiny_idefics2

    config = SUPConfig(
        variant="B-SUP", epochs=2, effective_batch_size=8, micro_batch_size=2, warmup_steps=0,
        lora_dropout=0.0, eval_before_training=False, device=args.device, optimizer="adamw",
    )  # fmt: skip
    device = resolve_device(args.device)
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    rt = runtime(device, dtype)
    out = args.out or Path(tempfile.gettempdir()) / "multiref-train-smoke"
    tiny = out / "tiny"
    if rt.is_main:  # (transformers saves from the main process only)
        build_tiny_idefics2(tiny, seed=0)
    rt.barrier()
    policy = load_policy(tiny, dtype=dtype, device=rt.device)
    attach_adapter(policy, config, None)
    ids = [f"t{i}" for i in range(10)]
    phrases = [("the bird on the left", "select A"), ("the boat with a sail", "select B")]
    examples = [
        Example(f"g{i}", 1, PromptGame(ids, [PromptTurn(phrases[i % 2][0], [], None)]),
                phrases[i % 2][1], 1, 0.5)
        for i in range(args.examples)
    ]  # fmt: skip
    from PIL import Image

    picture = Image.new("RGB", (32, 32), "white")
    result = fit(policy, config, examples, [], lambda names: [picture] * len(names), out / "run", rt=rt)
    losses = [m.loss for m in result.metrics if m.loss is not None]
    ok = rt.processes > 1 and bool(losses) and all(math.isfinite(x) for x in losses)
    if rt.is_main:
        rate = result.metrics[-1].examples_per_s
        print(
            f"train smoke: {rt.processes} processes on {rt.device.type} "
            f"({torch.cuda.get_device_name(rt.device) if rt.device.type == 'cuda' else 'CPU'}), "
            f"mixed precision {rt.mixed_precision}, loss per epoch "
            + ", ".join(f"{x:.4f}" for x in losses)
            + f", {rate or 0:.1f} examples/s, examples {result.metrics[-1].examples}: "
            + ("OK" if ok else "FAILED"),
            flush=True,
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
