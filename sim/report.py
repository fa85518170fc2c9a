"""The simulated study's report: per round and system, success with its 95% Wilson interval,
turns per game, click accuracy, and the feedback decoder scored against the TRUE labels (which
only the simulation knows and only this module reads), plus learning-curve plots and a JSON
summary."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from learning.report import wilson_interval


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def decoder_scores(pairs: list[tuple[int, int]]) -> dict[str, Any]:
    """(true label, decoded label) pairs; positive = +1. Precision, recall, false-positive rate."""
    tp = sum(t == 1 and d == 1 for t, d in pairs)
    fp = sum(t != 1 and d == 1 for t, d in pairs)
    fn = sum(t == 1 and d != 1 for t, d in pairs)
    tn = sum(t != 1 and d != 1 for t, d in pairs)
    return {
        "n": len(pairs),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "false_positive_rate": fp / (fp + tn) if fp + tn else None,
    }


def summarise(games: list[dict], truth: list[dict], decoded: dict[tuple[str, int], int]) -> list[dict]:
    """One row per (round, system)."""
    by = defaultdict(list)
    for g in games:
        by[(g["round"], g["system"])].append(g)
    truth_by = defaultdict(list)
    for t in truth:
        truth_by[(t["round"], t["system"])].append(t)
    rows = []
    for (rnd, system), gs in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        n, wins = len(gs), sum(bool(g["success"]) for g in gs)
        lo, hi = wilson_interval(wins, n)
        selects = sum(g["selects"] for g in gs)
        ts = truth_by[(rnd, system)]
        pairs = [(t["true_label"], decoded[(t["game_id"], t["turn"])]) for t in ts if (t["game_id"], t["turn"]) in decoded]
        rows.append(
            {
                "round": rnd,
                "system": system,
                "games": n,
                "successes": wins,
                "success_rate": wins / n if n else None,
                "success_ci95": [lo, hi],
                "turns_per_game": sum(g["turns"] for g in gs) / n if n else None,
                "click_accuracy": sum(g["target_selects"] for g in gs) / selects if selects else None,
                "true_positive_actions": sum(t["true_label"] == 1 for t in ts),
                "reactions": len(ts),
                "decoded_positive_actions": sum(d == 1 for _, d in pairs),
                "decoder": decoder_scores(pairs),
            }
        )
    return rows


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def table_rows(rows: list[dict], positives: dict | None = None) -> list[list[str]]:
    out = []
    for r in rows:
        d = r["decoder"]
        lo, hi = r["success_ci95"]
        out.append(
            [
                str(r["round"]),
                r["system"],
                str(r["games"]),
                f"{_pct(r['success_rate'])} [{_pct(lo)}, {_pct(hi)}]",
                f"{r['turns_per_game']:.2f}" if r["turns_per_game"] is not None else "—",
                _pct(r["click_accuracy"]),
                _pct(d["precision"]),
                _pct(d["recall"]),
                _pct(d["false_positive_rate"]),
                str(r.get("training_positives", "—")),
            ]
        )
    return out


HEADER = [
    "round", "system", "games", "success [95% CI]", "turns/game", "click acc.",
    "decoder precision", "decoder recall", "decoder FPR", "positives trained on",
]


def rich_table(rows: list[dict]):
    from rich.table import Table

    t = Table(title="simulated study (decoder scored against the true labels)")
    for h in HEADER:
        t.add_column(h, justify="right")
    for r in table_rows(rows):
        t.add_row(*r)
    return t


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(rows)]
    return "\n".join(lines)


def plot(rows: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    systems = sorted({r["system"] for r in rows})
    for s in systems:
        rs = sorted((r for r in rows if r["system"] == s), key=lambda r: r["round"])
        x = [r["round"] for r in rs]
        y = [100 * (r["success_rate"] or 0) for r in rs]
        err = [
            [100 * ((r["success_rate"] or 0) - r["success_ci95"][0]) for r in rs],
            [100 * (r["success_ci95"][1] - (r["success_rate"] or 0)) for r in rs],
        ]
        a.errorbar(x, y, yerr=err, marker="o", capsize=3, label=s)
        if s != "human":
            fpr = [(r["round"], r["decoder"]["false_positive_rate"]) for r in rs]
            b.plot([p for p, v in fpr if v is not None], [100 * v for _, v in fpr if v is not None], marker="o", label=f"{s} FPR")
            rec = [(r["round"], r["decoder"]["recall"]) for r in rs]
            b.plot([p for p, v in rec if v is not None], [100 * v for _, v in rec if v is not None], marker="x", linestyle="--", label=f"{s} recall")
    a.set_xlabel("round")
    a.set_ylabel("success rate (%) with 95% Wilson interval")
    a.set_ylim(0, 100)
    a.set_title("interaction success")
    a.legend()
    b.set_xlabel("round")
    b.set_ylabel("%")
    b.set_ylim(0, 100)
    b.set_title("feedback decoder vs true labels")
    b.legend(fontsize=7)
    for ax in (a, b):
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write(run_dir: Path, decoded: dict[tuple[str, int], int], extra: dict | None = None) -> dict:
    """Read the run's side files, write report/summary.json, report.md and learning_curves.png."""
    games = read_jsonl(run_dir / "games.jsonl")
    truth = read_jsonl(run_dir / "truth.jsonl")
    rows = summarise(games, truth, decoded)
    positives = (extra or {}).get("training_positives", {})
    for r in rows:
        # positives the adapter deployed in round r was trained on (None in round 0)
        r["training_positives"] = positives.get(f"{r['system']}/{r['round']}", "—")
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    png = plot(rows, out / "learning_curves.png")
    summary = {"rows": rows, **(extra or {})}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "report.md").write_text(markdown(rows) + f"\n\n![learning curves]({png.name})\n")
    return summary
