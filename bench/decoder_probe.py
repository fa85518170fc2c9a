"""The stand-in decoder's false positives, offline: pre-train a stand-in base exactly as the
simulated study does (``sim.study.Study``'s own setup and ``_base``, with a given
``PretrainConfig``), then decode the reactions of fresh simulated games — 10 images, a listener
near the study's chance click accuracy, the study's pool with all its crowd descriptions, seeds
the pre-training never drew — through ``learning.retrospect``'s ``FeedbackDecoder`` as
``retrospect`` loads it (binary, the paper's ``generate`` scoring, 256-token prompts), and score
it against the speakers' true labels, as the study's report does.

    .venv/bin/python bench/decoder_probe.py                                   # the defaults
    .venv/bin/python bench/decoder_probe.py --order mixed --feedback-steps 300   # shuffled together
    .venv/bin/python bench/decoder_probe.py --order feedback-last --feedback-steps 500 --feedback-lr 1e-3

Prints precision, recall and false-positive rate, the false positives by what the reaction
said (a negative word, none, an ambiguous word, a wrong-polarity word), the pre-training time
per kind of step; ``--json-out`` writes them. The base is built in a temporary folder (or
``--keep``) and not cached: each run pre-trains.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REFERENCE = ROOT.parent / "shared" / "reference" / "kilogram"


def action_loss(policy, turns, svgs: Path, batch: int = 16) -> float:
    """Mean token loss of the listener's action on ``turns`` (the pre-training loss, no update)."""
    import torch

    from learning.datasets import ActionCollator, augment, model_inputs
    from policy_worker.gamedata import TangramImages
    from sim.base import _token_loss

    collator = ActionCollator(policy, TangramImages(svgs).images, with_allowed=False)
    total, n = 0.0, 0
    with torch.inference_mode():
        for k in range(0, len(turns), batch):
            b = collator([augment(e, None) for e in turns[k : k + batch]])
            width = b["targets"].shape[1]
            logits = policy.model(**model_inputs(b, policy.device, policy.dtype), logits_to_keep=width + 1).logits
            loss = _token_loss(logits[:, :-1], b["targets"], b["target_mask"].float())
            total, n = total + loss.item() * len(b["targets"]), n + len(b["targets"])
    return round(total / max(1, n), 4)


def main(argv: list[str] | None = None) -> int:
    from sim.base import PretrainConfig

    d = PretrainConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy-steps", type=int, default=d.policy_steps)
    ap.add_argument("--feedback-steps", type=int, default=d.feedback_steps)
    ap.add_argument("--final-policy-steps", type=int, default=d.final_policy_steps,
                    help="feedback-last: listener steps shuffled into the last phase")
    ap.add_argument("--order", choices=("mixed", "feedback-last"), default=d.order)
    ap.add_argument("--feedback-lr", type=float, default=d.feedback_learning_rate,
                    help="learning rate of the decoder phase (feedback-last; default: --lr)")
    ap.add_argument("--lr", type=float, default=d.learning_rate)
    ap.add_argument("--games", type=int, default=150, help="held-out simulated games to decode")
    ap.add_argument("--accuracy", type=float, default=0.45,
                    help="held-out listener's chance of doing what the speaker meant (the study's "
                         "model listener clicks a target 42–46%% of the time)")
    ap.add_argument("--listener-turns", type=int, default=96, help="held-out turns for the listener's loss")
    ap.add_argument("--seed", type=int, default=0, help="the study's seed (pool, base)")
    ap.add_argument("--annotations", type=Path, default=REFERENCE / "dense_annotations.json")
    ap.add_argument("--tangrams", type=Path, default=REFERENCE / "tangrams-svg")
    ap.add_argument("--keep", type=Path, default=None, help="build the base here and keep it")
    ap.add_argument("--json-out", type=Path, default=None)
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from learning.retrospect import DecoderConfig, load_decoder
    from sim.base import pretraining_data
    from sim.study import Study, StudyConfig

    pre = PretrainConfig(
        policy_steps=args.policy_steps, feedback_steps=args.feedback_steps, order=args.order,
        feedback_learning_rate=args.feedback_lr, learning_rate=args.lr, seed=args.seed,
        final_policy_steps=args.final_policy_steps,
    )
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.keep or Path(tmp) / "study"
        config = StudyConfig(run_dir=run_dir, annotations=args.annotations, tangram_svgs=args.tangrams,
                             seed=args.seed, pretrain=pre)
        study = Study(config, console)
        study._load_state(resume=False)
        pool, tangrams = study._setup()  # the study's pool, all its descriptions: as its games
        started = time.time()
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:
            base = study._base(pool, tangrams, progress)
        built = time.time() - started
        # Held-out games: seeds far from the pre-training's (seed + 1), 10 images as in the study.
        turns, held_out = pretraining_data(pool, config.noise, args.games, 10_000 + args.seed,
                                           listener_accuracy=args.accuracy, context_sizes=(10,))
        decoder = load_decoder(base, DecoderConfig("binary"), device="cpu")
        listener_loss = action_loss(decoder.policy, turns[: args.listener_turns], args.tangrams)
        t0 = time.time()
        decisions = decoder.decide([f.context for f in held_out])
        decode_s = time.time() - t0
        info = study.state["pretraining"]

    pairs = [(f.reaction.true_label, d.label, f.reaction.said) for f, d in zip(held_out, decisions)]
    tp = sum(t == 1 and y == 1 for t, y, _ in pairs)
    fp = sum(t != 1 and y == 1 for t, y, _ in pairs)
    fn = sum(t == 1 and y != 1 for t, y, _ in pairs)
    tn = sum(t != 1 and y != 1 for t, y, _ in pairs)
    negatives_by_said = Counter(s for t, _, s in pairs if t != 1)
    fp_by_said = Counter(s for t, y, s in pairs if t != 1 and y == 1)
    clicks = sum(t == 1 for t, _, _ in pairs) / max(1, len(pairs))
    result = {
        "pretrain": info["config"],
        "final_policy_loss": info["final_policy_loss"],
        "final_feedback_loss": info["final_feedback_loss"],
        # what the decoder phase costs the listener: its token loss on the actions of held-out
        # human-listener turns (10 images, the pool's own tangrams)
        "held_out_listener_loss": listener_loss,
        "pretrain_seconds": info["seconds"],
        "pretrain_seconds_by_kind": info.get("seconds_by_kind"),
        "build_and_pretrain_seconds": round(built, 1),
        "decode_seconds": round(decode_s, 1),
        "reactions": len(pairs),
        "true_positive_share": round(clicks, 3),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "false_positive_rate": fp / (fp + tn) if fp + tn else None,
        "false_positives_by_said": {s: f"{fp_by_said[s]}/{n}" for s, n in sorted(negatives_by_said.items())},
        "load_average": os.getloadavg(),
    }
    console.print_json(json.dumps(result))
    fpr = result["false_positive_rate"]
    console.print(f"decoder FPR vs true labels: {100 * fpr:.1f}% ({fp}/{fp + tn}); precision "
                  f"{100 * (result['precision'] or 0):.1f}%, recall {100 * (result['recall'] or 0):.1f}%; "
                  f"pre-training {info['seconds']:.0f} s {info.get('seconds_by_kind')}")
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
