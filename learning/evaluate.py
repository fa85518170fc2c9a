"""Offline evaluation of a policy on held-out human turns, and the checkpoint-selection metric
(docs/learning.md).

A held-out turn is a human listener's action in a human–human game, with the prompt the policy
would have seen. The policy predicts an action for it in one of two modes:

* ``sample`` (paper): sampled at temperature 1 **without grammar** (paper decoding: the
  action-token vocabulary, a regex parse, illegal letters dropped, the first-image fallback),
  each turn with its own fixed seed (from the run's seed and the turn's id), so the metric of
  two epochs differs only by the model;
* ``greedy`` (this project's alternative): greedy grammar-constrained decoding.

The metrics are the reference evaluation's: exact match (predicted clicks = the human's), select
and deselect accuracy (the selected / deselected letters match; also on the turns where the
human selected / deselected anything), true and false positive rates (|pred ∩ human| / |human|
and |pred − human| / |human|, averaged over turns), and exact match by turn number.

Checkpoint selection during training (``learning.train.fit``) keeps the epoch with the best
:func:`heldout_metric`; ties go to the earlier epoch. The reference filters the held-out turns to
*good moves* (a good select or a good deselect, ``learning.retrospect.is_good_move``):
:func:`load_heldout_turns` does, unless told otherwise.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from learning.datasets import Example, _stats, human_turns, rounds_up_to
from learning.distributed import Runtime
from policy_worker.prompt import parse_action

MODES = ("sample", "greedy")
MODE_ALIASES = {"exact_match": "greedy", "greedy_exact_match": "greedy", "paper": "sample"}


def resolve_mode(mode: str) -> str:
    mode = MODE_ALIASES.get(mode, mode)
    if mode not in MODES:
        raise ValueError(f"selection must be sample or greedy, not {mode!r}")
    return mode


def turn_seed(seed: int, key: str) -> int:
    """The fixed sampling seed of one held-out turn."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") >> 1


# ---------------------------------------------------------------- predicting


def predict(
    policy: Any,
    examples: Sequence[Example],
    images: Callable[[list[str]], list[Any]],
    mode: str = "sample",
    seed: int = 42,
    batch_size: int = 16,
    max_new_tokens: int = 10,
    adapter: str | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """The policy's action for each held-out turn (see the module for the two modes).

    ``adapter`` names a loaded adapter; None runs ``policy.model`` as it is (while training:
    the adapter being trained). The model is put in eval mode and back."""
    from policy_worker.decoding import DecodeRequest, decode_actions

    mode = resolve_mode(mode)
    was_training = policy.model.training
    policy.model.eval()
    out: list[str] = []
    try:
        for k in range(0, len(examples), batch_size):
            chunk = examples[k : k + batch_size]
            requests = [
                DecodeRequest.for_game(
                    e.game,
                    images(list(e.game.listener_order)),
                    temperature=1.0 if mode == "sample" else 0.0,
                    seed=turn_seed(seed, e.key()) if mode == "sample" else None,
                    decoding="paper" if mode == "sample" else "grammar",
                    max_new_tokens=max_new_tokens,
                    adapter=adapter,
                )
                for e in chunk
            ]
            out += [r.action for r in decode_actions(policy, requests, max_batch_size=batch_size)]
            if on_batch:
                on_batch(len(chunk))
    finally:
        if was_training:
            policy.model.train()
    return out


def selection_accuracy(
    policy: Any,
    heldout: Sequence[Example],
    images: Callable[[list[str]], list[Any]],
    mode: str = "sample",
    seed: int = 42,
    batch_size: int = 16,
    max_new_tokens: int = 10,
    adapter: str | None = None,
) -> float | None:
    """Share of held-out turns whose predicted action is the human's (None: no turns)."""
    if not heldout:
        return None
    predicted = predict(policy, heldout, images, mode, seed, batch_size, max_new_tokens, adapter)
    return sum(p == e.action for p, e in zip(predicted, heldout)) / len(heldout)


def heldout_metric(
    policy: Any, heldout: Sequence[Example], images: Callable[[list[str]], list[Any]], config: Any
) -> float | None:
    """The checkpoint-selection metric of a training config: ``config.selection`` (sample, the
    paper's; greedy, the former exact match), its seed, batch size and decoding budget."""
    return selection_accuracy(
        policy,
        heldout,
        images,
        getattr(config, "selection", "sample"),
        config.seed,
        config.eval_batch_size,
        config.max_new_tokens,
    )


# ---------------------------------------------------------------- metrics


def _sets(action: str) -> tuple[set[str], set[str]]:
    deselect, select = parse_action(action)
    return set(select), set(deselect)


def turn_metrics(gold: str, predicted: str) -> dict[str, float | None]:
    """The reference's per-turn numbers for one prediction against the human's action."""
    g_sel, g_desel = _sets(gold)
    p_sel, p_desel = _sets(predicted)
    human, pred = g_sel | g_desel, p_sel | p_desel
    if not human:
        raise ValueError("a held-out turn where the human did nothing cannot be scored")
    return {
        "exact_match": float(pred == human),
        "select_accuracy": float(p_sel == g_sel),
        "deselect_accuracy": float(p_desel == g_desel),
        "select_accuracy_on_select_turns": float(p_sel == g_sel) if g_sel else None,
        "deselect_accuracy_on_deselect_turns": float(p_desel == g_desel) if g_desel else None,
        "true_positive_rate": len(pred & human) / len(human),
        "false_positive_rate": len(pred - human) / len(human),
    }


def summarize(rows: Sequence[tuple[int, str, str]]) -> dict[str, Any]:
    """(turn, human action, predicted action) rows -> the means of :func:`turn_metrics` (each
    over the turns where it is defined) and exact match by turn."""
    per = [turn_metrics(gold, pred) for _, gold, pred in rows]
    out: dict[str, Any] = {"n": len(rows)}
    keys = list(per[0]) if per else list(turn_metrics("select A", "select A"))
    for k in keys:
        vals = [m[k] for m in per if m[k] is not None]
        out[k] = sum(vals) / len(vals) if vals else None
    by_turn: dict[int, list[float]] = {}
    for (turn, _, _), m in zip(rows, per):
        by_turn.setdefault(turn, []).append(m["exact_match"])
    out["by_turn"] = {
        t: {"n": len(v), "exact_match": sum(v) / len(v)} for t, v in sorted(by_turn.items())
    }
    return out


# ---------------------------------------------------------------- the held-out turns


async def load_heldout_turns(
    db: Any,
    *,
    split: str | None = None,
    source: str | None = None,
    rounds: Sequence[int] | None = None,
    max_round: int | None = None,
    include_unrounded: bool = True,
    good_only: bool = True,
    limit: int | None = None,
    seed: int = 0,
) -> tuple[list[Example], dict[str, Any]]:
    """Human listeners' turns of ended human–human games, filtered to good moves (``good_only``)
    and to turns where the listener did something; optionally only a named ``split`` of games,
    a ``source`` (live, imported), some ``rounds`` or rounds ≤ ``max_round``. Above ``limit``
    a fixed sample is kept (a hash of seed and turn id). Returns the examples and their stats."""
    from app.db.models import Game

    where = []
    if split is not None:
        where.append(Game.split == split)
    if source is not None:
        where.append(Game.source == source)
    if rounds is not None:
        where.append(Game.round.in_(list(rounds)))
    if max_round is not None:
        where.append(rounds_up_to(max_round, include_unrounded))
    examples, dropped = await human_turns(
        db,
        *where,
        changed_only=True,
        good_only=good_only,
        limit=limit,
        seed=seed,
    )
    stats = _stats(examples).json()
    stats.update({"good_only": good_only, "dropped": dropped})
    return examples, stats


# ---------------------------------------------------------------- output


def _pct(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


METRIC_NAMES = {
    "exact_match": "exact match",
    "select_accuracy": "select accuracy",
    "deselect_accuracy": "deselect accuracy",
    "select_accuracy_on_select_turns": "select accuracy (select turns)",
    "deselect_accuracy_on_deselect_turns": "deselect accuracy (deselect turns)",
    "true_positive_rate": "true positive rate",
    "false_positive_rate": "false positive rate",
}


def rich_tables(summary: dict[str, Any], title: str) -> list[Any]:
    from rich.table import Table

    main = Table(title=title)
    main.add_column("metric")
    main.add_column("value", justify="right")
    main.add_row("held-out turns", str(summary["n"]))
    for k, name in METRIC_NAMES.items():
        main.add_row(name, _pct(summary.get(k)))
    turns = Table(title="exact match by turn")
    turns.add_column("turn", justify="right")
    turns.add_column("turns", justify="right")
    turns.add_column("exact match", justify="right")
    for t, v in summary["by_turn"].items():
        turns.add_row(str(t), str(v["n"]), _pct(v["exact_match"]))
    return [main, turns]


def plot(summary: dict[str, Any], path: Path, title: str) -> Path:
    """Two panels: the overall metrics, and exact match by turn (bars labelled with counts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = [n for k, n in METRIC_NAMES.items() if summary.get(k) is not None]
    values = [100 * summary[k] for k in METRIC_NAMES if summary.get(k) is not None]
    left.barh(names, values, color="#4c72b0")
    left.invert_yaxis()
    left.set(xlim=(0, 100), xlabel="%", title=f"{title} (n = {summary['n']})")
    turns = list(summary["by_turn"])
    right.bar(
        [str(t) for t in turns], [100 * summary["by_turn"][t]["exact_match"] for t in turns],
        color="#55a868",
    )
    for i, t in enumerate(turns):
        right.text(i, 2, str(summary["by_turn"][t]["n"]), ha="center", fontsize=8)
    right.set(ylim=(0, 100), xlabel="turn", ylabel="exact match (%)", title="by turn")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclass
class Evaluation:
    summary: dict[str, Any]
    heldout: dict[str, Any]
    rows: list[dict[str, Any]]
    run: dict[str, Any] = field(default_factory=dict)  # processes, turns per process

    def json(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "heldout": self.heldout,
            "turns": self.rows,
            "run": self.run,
        }


def evaluate(
    policy: Any,
    examples: Sequence[Example],
    images: Callable[[list[str]], list[Any]],
    mode: str = "sample",
    seed: int = 42,
    batch_size: int = 16,
    adapter: str | None = None,
    heldout_stats: dict[str, Any] | None = None,
    on_batch: Callable[[int], None] | None = None,
    rt: Runtime | None = None,
) -> Evaluation:
    """Predict every held-out turn and compute the metrics. Under ``accelerate launch`` (``rt``
    distributed) each process predicts its share of the turns (each turn keeps its own seed, so
    the share does not change a sample) and every process gets all the predictions back."""
    rt = rt or Runtime()
    mine = rt.split(examples)
    predicted = predict(
        policy, mine, images, mode, seed, batch_size, adapter=adapter, on_batch=on_batch
    )
    per_process = rt.gather([len(mine)])
    predicted = rt.gather(predicted, total=len(examples))
    rows = [
        {"game_id": e.game_id, "turn": e.turn, "human": e.action, "predicted": p}
        for e, p in zip(examples, predicted)
    ]
    summary = summarize([(e.turn, e.action, p) for e, p in zip(examples, predicted)])
    summary.update({"mode": resolve_mode(mode), "seed": seed})
    return Evaluation(
        summary, heldout_stats or {}, rows, {"processes": rt.processes, "per_process": per_process}
    )
