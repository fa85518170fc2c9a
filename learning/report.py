"""The numbers of docs/method.md per system and round, as a Markdown report with PNG plots.

Per (system, round): interaction success rate with a 95% Wilson interval, turns per game, click
accuracy (share of newly selected images that are targets), the held-out exact match recorded
in the checkpoint's training manifest, the feedback decoders' confusion, precision, recall and
F1 against the heuristic label (the reference's rule, recomputed here from the turns and targets, so labels
stored under an older rule do not leak in), and the speakers' language: vocabulary size, mean
utterance length in words, and the rate of reset / "try again" phrases.

Success and turns count completed games (outcome successful or unsuccessful); games ended
early for another reason (idle, disconnect, admin) are counted as aborted and left out of both.
Human–human games (no system name) are reported as the system ``human``.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from learning.retrospect import (
    CLASSES,
    confusion_matrix,
    confusion_summary,
    heuristic_label,
    metrics_from_confusion,
    signed_label,
)

RESET_RE = re.compile(
    r"\b(try again|start (?:over|again)|from scratch|reset|"
    r"(?:clear|deselect|unselect|undo|remove) (?:all|everything|them all))\b",
    re.IGNORECASE,
)
WORD_RE = re.compile(r"[a-z0-9']+")


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% for z = 1.96); (0, 1) when n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class SystemRound:
    system: str
    round: int | None
    games: int = 0
    completed: int = 0
    successes: int = 0
    aborted: int = 0
    success_rate: float | None = None
    success_ci: tuple[float, float] | None = None
    turns_per_game: float | None = None
    click_accuracy: float | None = None
    heldout_exact_match: float | None = None
    utterances: int = 0
    vocabulary: int = 0
    mean_utterance_words: float | None = None
    reset_rate: float | None = None
    confusion: dict[str, dict[int, dict[int, int]]] = field(default_factory=dict)
    human: Any = None  # the human review figures, a learning.agreement.Review

    @property
    def round_label(self) -> str:
        return "—" if self.round is None else str(self.round)


def _system_of(system: str | None, listener_kind: str) -> str:
    if system:
        return system
    return "human" if listener_kind == "human" else "unknown"


async def collect(db: Any, rounds: Sequence[int] | None = None) -> list[SystemRound]:
    """Every (system, round) of ended games; ``rounds`` limits to those rounds (None: all,
    including games without a round)."""
    from sqlalchemy import select

    from app.db.models import Checkpoint, FeedbackLabel, Game, Turn

    async with db.session() as s:
        q = select(
            Game.id,
            Game.system,
            Game.round,
            Game.listener_kind,
            Game.outcome,
            Game.config,
            Game.checkpoint,
        ).where(Game.status == "ended")
        if rounds is not None:
            q = q.where(Game.round.in_(list(rounds)))
        games = list(await s.execute(q))
        ids = [g.id for g in games]
        turns: dict[str, list[Any]] = defaultdict(list)
        labels: dict[tuple[str, int, str], int] = {}
        for k in range(0, len(ids), 500):
            part = ids[k : k + 500]
            for t in (await s.execute(select(Turn).where(Turn.game_id.in_(part)))).scalars():
                turns[t.game_id].append(t)
            rows = await s.execute(
                select(FeedbackLabel)
                .where(FeedbackLabel.game_id.in_(part))
                .order_by(FeedbackLabel.created_at, FeedbackLabel.id)
            )
            for lab in rows.scalars():  # the newest label of each action and decoder wins
                labels[(lab.game_id, lab.turn, lab.decoder)] = lab.label
        manifests = {
            c.id: c.manifest or {} for c in (await s.execute(select(Checkpoint))).scalars()
        }

    groups: dict[tuple[str, int | None], list[Any]] = defaultdict(list)
    for g in games:
        groups[(_system_of(g.system, g.listener_kind), g.round)].append(g)
    label_groups: dict[tuple[str, int | None], dict[str, list[tuple[int | None, int]]]] = (
        defaultdict(lambda: defaultdict(list))
    )
    key_of = {g.id: (_system_of(g.system, g.listener_kind), g.round) for g in games}
    heuristics = {
        (g.id, t.turn): heuristic_label(
            t.selection_before, t.selection_after, g.config.get("targets", [])
        )
        for g in games
        for t in turns[g.id]
        if t.selection_after is not None
    }
    for (gid, turn, decoder), label in labels.items():
        label_groups[key_of[gid]][decoder].append((heuristics.get((gid, turn)), label))

    out: list[SystemRound] = []
    for key in sorted(groups, key=lambda k: (k[0], -1 if k[1] is None else k[1])):
        rows = groups[key]
        sr = SystemRound(system=key[0], round=key[1], games=len(rows))
        completed = [g for g in rows if g.outcome in ("successful", "unsuccessful")]
        sr.completed = len(completed)
        sr.aborted = sr.games - sr.completed
        sr.successes = sum(g.outcome == "successful" for g in completed)
        if completed:
            sr.success_rate = sr.successes / sr.completed
            sr.success_ci = wilson_interval(sr.successes, sr.completed)
            played = [sum(t.selection_after is not None for t in turns[g.id]) for g in completed]
            sr.turns_per_game = sum(played) / len(played)
        good = picked = 0
        words: list[list[str]] = []
        resets = 0
        for g in rows:
            targets = set(g.config.get("targets", []))
            for t in turns[g.id]:
                if t.selection_after is not None:
                    new = set(t.selection_after) - set(t.selection_before)
                    picked += len(new)
                    good += len(new & targets)
                if t.utterance:
                    words.append(WORD_RE.findall(t.utterance.lower()))
                    resets += bool(RESET_RE.search(t.utterance))
        sr.click_accuracy = good / picked if picked else None
        sr.utterances = len(words)
        sr.vocabulary = len({w for ws in words for w in ws})
        sr.mean_utterance_words = sum(map(len, words)) / len(words) if words else None
        sr.reset_rate = resets / len(words) if words else None
        sr.confusion = {
            d: confusion_matrix(pairs) for d, pairs in sorted(label_groups[key].items())
        }
        used = [g.checkpoint for g in rows if g.checkpoint]
        if used:
            main = max(set(used), key=used.count)
            em = manifests.get(main, {}).get("best_exact_match")
            sr.heldout_exact_match = float(em) if isinstance(em, (int, float)) else None
        out.append(sr)
    await _attach_human_review(db, out, rounds)
    return out


# ---------------------------------------------------------------- output


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


COLUMNS = (
    "system",
    "round",
    "games",
    "success",
    "95% CI",
    "turns/game",
    "click acc.",
    "held-out EM",
    "decoder agreement",
    "vocab",
    "words/utt.",
    "reset rate",
)


def table_rows(results: Sequence[SystemRound]) -> list[list[str]]:
    rows = []
    for r in results:
        agreement = []
        for decoder, counts in r.confusion.items():
            summary = confusion_summary(counts)
            if summary["n"]:
                agreement.append(f"{decoder[0].upper()} {_pct(summary['agreement'])}")
        ci = "—" if r.success_ci is None else f"{_pct(r.success_ci[0])}–{_pct(r.success_ci[1])}"
        rows.append(
            [
                r.system,
                r.round_label,
                f"{r.completed}" + (f" (+{r.aborted} aborted)" if r.aborted else ""),
                _pct(r.success_rate),
                ci,
                _num(r.turns_per_game),
                _pct(r.click_accuracy),
                _pct(r.heldout_exact_match),
                ", ".join(agreement) or "—",
                str(r.vocabulary),
                _num(r.mean_utterance_words),
                _pct(r.reset_rate),
            ]
        )
    return rows


def rich_table(results: Sequence[SystemRound]) -> Any:
    from rich.table import Table

    table = Table(title="MultiRef: systems and rounds")
    for c in COLUMNS:
        table.add_column(c, justify="left" if c == "system" else "right")
    for row in table_rows(results):
        table.add_row(*row)
    return table


def _rounds_axis(results: Sequence[SystemRound]) -> tuple[list[int | None], dict[int | None, int]]:
    rounds = sorted({r.round for r in results}, key=lambda x: -1 if x is None else x)
    return rounds, {r: i for i, r in enumerate(rounds)}


def plot_all(results: Sequence[SystemRound], out: Path) -> list[Path]:
    """success.png, turns.png, confusion.png (if labels), language.png; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    rounds, pos = _rounds_axis(results)
    labels = ["—" if r is None else str(r) for r in rounds]
    systems = sorted({r.system for r in results})
    paths: list[Path] = []

    def series(system: str, attr: str) -> tuple[list[int], list[float]]:
        pts = [
            (pos[r.round], getattr(r, attr))
            for r in results
            if r.system == system and getattr(r, attr) is not None
        ]
        pts.sort()
        return [p[0] for p in pts], [p[1] for p in pts]

    # success per round per system, with Wilson intervals
    fig, ax = plt.subplots(figsize=(7, 4))
    for system in systems:
        rows = sorted(
            (r for r in results if r.system == system and r.success_rate is not None),
            key=lambda r: pos[r.round],
        )
        if not rows:
            continue
        x = [pos[r.round] for r in rows]
        y = [100 * r.success_rate for r in rows]
        err = [
            [100 * (r.success_rate - r.success_ci[0]) for r in rows],
            [100 * (r.success_ci[1] - r.success_rate) for r in rows],
        ]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=system)
    ax.set(
        xlabel="round",
        ylabel="success rate (%)",
        ylim=(0, 100),
        title="Interaction success (95% Wilson CI)",
    )
    ax.set_xticks(range(len(rounds)), labels)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "success.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    for system in systems:
        x, y = series(system, "turns_per_game")
        if x:
            ax.plot(x, y, marker="o", label=system)
    ax.set(xlabel="round", ylabel="turns per completed game", title="Turns per game")
    ax.set_xticks(range(len(rounds)), labels)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "turns.png"))

    pooled: dict[str, dict[int, dict[int, int]]] = {}
    for r in results:
        for decoder, counts in r.confusion.items():
            acc = pooled.setdefault(decoder, {h: {d: 0 for d in CLASSES} for h in CLASSES})
            for h in CLASSES:
                for d in CLASSES:
                    acc[h][d] += counts[h][d]
    if pooled:
        fig, axes = plt.subplots(1, len(pooled), figsize=(4.2 * len(pooled), 3.8), squeeze=False)
        for ax, (decoder, counts) in zip(axes[0], sorted(pooled.items())):
            m = [[counts[h][d] for d in CLASSES] for h in CLASSES]
            ax.imshow(m, cmap="Blues")
            for i in range(3):
                for j in range(3):
                    dark = m[i][j] > 0.5 * max(max(row) for row in m)
                    ax.text(
                        j,
                        i,
                        str(m[i][j]),
                        ha="center",
                        va="center",
                        fontsize=10,
                        color="white" if dark else "black",
                    )
            ticks = [signed_label(c) for c in CLASSES]
            ax.set_xticks(range(3), ticks)
            ax.set_yticks(range(3), ticks)
            ax.set(xlabel="decoded", ylabel="heuristic", title=f"{decoder} decoder vs heuristic")
        paths.append(_save(fig, out / "confusion.png"))

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, attr, title in zip(
        axes,
        ("vocabulary", "mean_utterance_words", "reset_rate"),
        ("vocabulary size", "words per utterance", "reset / try-again rate"),
    ):
        for system in systems:
            x, y = series(system, attr)
            if x:
                ax.plot(x, y, marker="o", label=system)
        ax.set(xlabel="round", title=title)
        ax.set_xticks(range(len(rounds)), labels)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Speaker language")
    paths.append(_save(fig, out / "language.png"))
    paths += human_review_plot(results, out)
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(results: Sequence[SystemRound], plots: Sequence[Path]) -> str:
    lines = ["# MultiRef report", ""]
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "---|" * len(COLUMNS))
    for row in table_rows(results):
        lines.append("| " + " | ".join(row) + " |")
    note = (
        "Success and turns per game count completed games (aborted games are left out); the "
        "interval is the 95% Wilson score interval. Click accuracy is the share of newly selected "
        "images that are targets. Held-out EM is the exact match of the system's checkpoint on "
        "held-out human–human turns (from its training manifest). Decoder agreement is the share "
        "of decoded labels equal to the heuristic label (B: binary, T: ternary)."
    )
    lines += [
        "",
        note,
        "",
    ]
    confusions = [
        (r, d, c) for r in results for d, c in r.confusion.items() if confusion_summary(c)["n"]
    ]
    if confusions:
        lines += ["## Decoder confusion (rows: heuristic, columns: decoded)", ""]
        for r, decoder, counts in confusions:
            s = confusion_summary(counts)
            m = metrics_from_confusion(counts)
            lines.append(
                f"**{r.system}, round {r.round_label}, {decoder}** — "
                f"agreement {_pct(s['agreement'])}, "
                "decoded positives the heuristic calls negative "
                f"{_pct(s['false_positive_share'])}, "
                f"weighted F1 {_pct(m['weighted_f1'])}"
            )
            lines.append("")
            lines.append("| class | precision | recall | F1 | support |")
            lines.append("|---|---|---|---|---|")
            for c in CLASSES:
                pc = m["per_class"][c]
                lines.append(
                    f"| {signed_label(c)} | {_pct(pc['precision'])} | {_pct(pc['recall'])} | "
                    f"{_pct(pc['f1'])} | {pc['support']} |"
                )
            lines.append("")
            lines.append(
                "| heuristic \\ decoded | " + " | ".join(signed_label(d) for d in CLASSES) + " |"
            )
            lines.append("|---|---|---|---|")
            for h in CLASSES:
                lines.append(
                    f"| {signed_label(h)} | "
                    + " | ".join(str(counts[h][d]) for d in CLASSES)
                    + " |"
                )
            lines.append("")
    lines += human_review_markdown(results)
    lines += ["## Plots", ""]
    for p in plots:
        lines.append(f"![{p.stem}]({p.name})")
        lines.append("")
    return "\n".join(lines)


def write_report(results: Sequence[SystemRound], out_dir: str | Path) -> dict[str, Any]:
    """report.md, metrics.json and the PNG plots under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = plot_all(results, out)
    (out / "report.md").write_text(markdown(results, plots), encoding="utf-8")
    metrics = [
        {
            **asdict(r),
            "confusion": {
                d: {str(h): {str(k): v for k, v in row.items()} for h, row in c.items()}
                for d, c in r.confusion.items()
            },
            "decoder_metrics": {
                d: {
                    k: v
                    for k, v in metrics_from_confusion(c).items()
                    if k != "confusion"
                }
                for d, c in r.confusion.items()
            },
        }
        for r in results
    ]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return {"report": out / "report.md", "metrics": out / "metrics.json", "plots": plots}


# ---------------------------------------------------------------- human review (issue 17)


async def _attach_human_review(
    db: Any, results: list[SystemRound], rounds: Sequence[int] | None
) -> None:
    """Puts each (system, round)'s human review figures on its row (``learning.agreement``)."""
    from learning.agreement import load_reviews

    rows = {(r.system, r.round): r for r in results}
    for rv in await load_reviews(db, rounds):
        if (rv.system, rv.round) not in rows:  # labelled turns of games the filter left out
            continue
        rows[(rv.system, rv.round)].human = rv


def _reviews(results: Sequence[SystemRound]) -> list[Any]:
    return [r.human for r in results if r.human is not None]


def human_review_markdown(results: Sequence[SystemRound]) -> list[str]:
    from learning.agreement import markdown as review_markdown

    return review_markdown(_reviews(results))


def human_review_plot(results: Sequence[SystemRound], out: Path) -> list[Path]:
    from learning.agreement import plot as review_plot

    return review_plot(_reviews(results), out)
