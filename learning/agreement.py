"""Human review of turns: agreement between annotators, and the feedback decoder and the
heuristic label measured against the human majority label (issue 17).

The first part is pure functions over labels (−1, 0, +1), checked against hand-computed values
in ``tests/test_agreement.py``:

* :func:`raw_agreement` — the mean share of agreeing rater pairs per item;
* :func:`cohen_kappa` — two raters over the same items;
* :func:`fleiss_kappa` — any fixed number of raters per item (Fleiss 1971);
* :func:`majority` — the label most raters gave, ``None`` on a tie;
* :func:`validation` — a predicted label (the decoder's, the heuristic's) against the human
  one: the 3×3 confusion matrix, accuracy, per-class recall, and for the positive class
  precision, recall, F1 and the false-positive rate.

The second part reads the labels from the database, groups them per (system, round), and adds
a section and a plot to ``multiref report`` and figures to the dashboard.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CLASSES = (-1, 0, 1)
FEEDBACK_WORDS = {1: "positive", 0: "neutral", -1: "negative"}
ACTION_WORDS = {1: "correct", 0: "partly", -1: "wrong"}


# ---------------------------------------------------------------- agreement (pure)


def raw_agreement(items: Iterable[Sequence[Hashable]]) -> float | None:
    """Mean over items (with at least two ratings) of the share of rater pairs that agree.
    For two raters it is the share of items they label alike. ``None`` without such items."""
    shares = []
    for ratings in items:
        n = len(ratings)
        if n < 2:
            continue
        counts = Counter(ratings)
        shares.append(sum(c * (c - 1) for c in counts.values()) / (n * (n - 1)))
    return sum(shares) / len(shares) if shares else None


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float | None:
    """Cohen's kappa of two raters who labelled the same items in the same order.

    ``None`` when it is undefined: no items, or chance agreement of 1 (both raters gave one and
    the same label to everything)."""
    if len(a) != len(b):
        raise ValueError(
            f"the two raters labelled {len(a)} and {len(b)} items; give the same items"
        )
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb[k] for k in ca) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1 - expected)


def fleiss_kappa(items: Sequence[Sequence[Hashable]]) -> float | None:
    """Fleiss' kappa; every item has the same number (≥ 2) of ratings. ``None`` when undefined
    (no items, or every rating is the same label)."""
    if not items:
        return None
    n = len(items[0])
    if n < 2 or any(len(r) != n for r in items):
        raise ValueError("Fleiss' kappa needs the same number (at least 2) of ratings per item")
    N = len(items)
    totals: Counter = Counter()
    p_bar = 0.0
    for ratings in items:
        counts = Counter(ratings)
        totals.update(counts)
        p_bar += (sum(c * c for c in counts.values()) - n) / (n * (n - 1))
    p_bar /= N
    p_e = sum((t / (N * n)) ** 2 for t in totals.values())
    if p_e >= 1.0:
        return None
    return (p_bar - p_e) / (1 - p_e)


def pairwise_cohen(
    ratings: dict[Hashable, dict[Hashable, Hashable]],
) -> dict[tuple, tuple[int, float | None]]:
    """Cohen's kappa of every pair of raters over the items both labelled.

    ``ratings[item][rater] = label``; returns ``{(rater_a, rater_b): (shared items, kappa)}``."""
    by_rater: dict[Hashable, dict[Hashable, Hashable]] = defaultdict(dict)
    for item, per in ratings.items():
        for rater, label in per.items():
            by_rater[rater][item] = label
    out = {}
    for a, b in itertools.combinations(sorted(by_rater, key=str), 2):
        shared = sorted(set(by_rater[a]) & set(by_rater[b]), key=str)
        if shared:
            out[(a, b)] = (
                len(shared),
                cohen_kappa([by_rater[a][i] for i in shared], [by_rater[b][i] for i in shared]),
            )
    return out


def majority(labels: Iterable[Hashable]) -> Hashable | None:
    """The label given most often; ``None`` if there is none or two labels tie for the most."""
    counts = Counter(labels).most_common()
    if not counts or (len(counts) > 1 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


def agreement(ratings: dict[Hashable, dict[Hashable, Hashable]]) -> dict[str, Any]:
    """Raw agreement, Fleiss' kappa and the mean pairwise Cohen's kappa of ``ratings[item][rater]``.

    Fleiss' kappa is computed over the items with the most common number of ratings (it needs a
    fixed number); ``fleiss_items`` says how many."""
    lists = [list(per.values()) for per in ratings.values()]
    multi = [r for r in lists if len(r) >= 2]
    sizes = Counter(len(r) for r in multi)
    fleiss, fleiss_items = None, 0
    if sizes:
        k = max(sizes, key=lambda s: (sizes[s], s))
        fixed = [r for r in multi if len(r) == k]
        fleiss, fleiss_items = fleiss_kappa(fixed), len(fixed)
    pairs = pairwise_cohen(ratings)
    kappas = [kap for _, kap in pairs.values() if kap is not None]
    return {
        "items": len(multi),
        "raw": raw_agreement(multi),
        "fleiss": fleiss,
        "fleiss_items": fleiss_items,
        "cohen": sum(kappas) / len(kappas) if kappas else None,
        "cohen_pairs": {
            f"{a}|{b}": {"items": n, "kappa": kap} for (a, b), (n, kap) in pairs.items()
        },
    }


# ---------------------------------------------------------------- validation (pure)


def _div(a: float, b: float) -> float | None:
    return a / b if b else None


def validation(pairs: Iterable[tuple[int, int]], positive: int = 1) -> dict[str, Any]:
    """A predicted label against the human one over ``(human, predicted)`` pairs.

    ``confusion[human][predicted]`` counts; accuracy; per-class recall (``recall_+1`` …, the
    study's per-class accuracy); for the class ``positive``: precision, recall, F1, and the
    false-positive rate = predicted positive among the turns people did *not* call positive
    (``fpr``), and among the turns people called negative (``fpr_negative``)."""
    confusion = {h: {p: 0 for p in CLASSES} for h in CLASSES}
    for h, p in pairs:
        confusion[h][p] += 1
    n = sum(sum(row.values()) for row in confusion.values())
    tp = confusion[positive][positive]
    predicted_pos = sum(confusion[h][positive] for h in CLASSES)
    human_pos = sum(confusion[positive].values())
    fp = predicted_pos - tp
    negatives = n - human_pos
    precision, recall = _div(tp, predicted_pos), _div(tp, human_pos)
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall > 0
        else (0.0 if precision is not None and recall is not None else None)
    )
    out: dict[str, Any] = {
        "n": n,
        "confusion": confusion,
        "accuracy": _div(sum(confusion[c][c] for c in CLASSES), n),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "fpr": _div(fp, negatives),
        "fpr_negative": _div(confusion[-1][positive], sum(confusion[-1].values())),
    }
    for c in CLASSES:
        out[f"recall_{c:+d}"] = _div(confusion[c][c], sum(confusion[c].values()))
    return out


# ---------------------------------------------------------------- one group of labels


@dataclass(frozen=True)
class LabelRow:
    """One finished human answer (skips excluded). ``feedback`` is None when the annotator took
    the feedback answer back after seeing the targets (no longer blind: left out)."""

    system: str
    round: int | None
    game_id: str
    turn: int
    annotator: str
    feedback: int | None
    action: int


@dataclass
class Review:
    """The human review figures of one (system, round)."""

    system: str
    round: int | None
    turns: int = 0
    labels: int = 0
    annotators: int = 0
    feedback_agreement: dict[str, Any] = field(default_factory=dict)
    action_agreement: dict[str, Any] = field(default_factory=dict)
    decoders: dict[str, dict[str, Any]] = field(default_factory=dict)  # vs human feedback
    heuristic: dict[str, Any] = field(default_factory=dict)  # vs human action label

    @property
    def round_label(self) -> str:
        return "—" if self.round is None else str(self.round)

    def json(self) -> dict[str, Any]:
        def conf(v: dict[str, Any]) -> dict[str, Any]:
            c = v.get("confusion")
            if c is None:
                return v
            return {
                **v,
                "confusion": {str(h): {str(p): k for p, k in row.items()} for h, row in c.items()},
            }

        return {
            "system": self.system,
            "round": self.round,
            "turns": self.turns,
            "labels": self.labels,
            "annotators": self.annotators,
            "feedback_agreement": self.feedback_agreement,
            "action_agreement": self.action_agreement,
            "decoders": {d: conf(v) for d, v in self.decoders.items()},
            "heuristic": conf(self.heuristic),
        }


def review(
    system: str,
    round_: int | None,
    rows: Sequence[LabelRow],
    decoded: dict[tuple[str, int], dict[str, int]],
    heuristics: dict[tuple[str, int], int],
) -> Review:
    """Agreement of the rows' annotators, and the decoders (``decoded[(game, turn)][decoder]``)
    and the heuristic label (``heuristics[(game, turn)]``) against the human majority."""
    fb: dict[tuple[str, int], dict[str, int]] = defaultdict(dict)
    ac: dict[tuple[str, int], dict[str, int]] = defaultdict(dict)
    for r in rows:
        if r.feedback is not None:
            fb[(r.game_id, r.turn)][r.annotator] = r.feedback
        ac[(r.game_id, r.turn)][r.annotator] = r.action
    out = Review(
        system, round_, turns=len(ac), labels=len(rows), annotators=len({r.annotator for r in rows})
    )
    out.feedback_agreement = agreement(fb)
    out.action_agreement = agreement(ac)
    human_fb = {k: majority(v.values()) for k, v in fb.items()}
    human_ac = {k: majority(v.values()) for k, v in ac.items()}
    names = sorted({d for v in decoded.values() for d in v})
    for d in names:
        pairs = [
            (h, decoded[k][d])
            for k, h in human_fb.items()
            if h is not None and d in decoded.get(k, {})
        ]
        out.decoders[d] = validation(pairs)
    out.heuristic = validation(
        [(h, heuristics[k]) for k, h in human_ac.items() if h is not None and k in heuristics]
    )
    return out


# ---------------------------------------------------------------- the database side


async def load_reviews(db: Any, rounds: Sequence[int] | None = None) -> list[Review]:
    """Every (system, round) with finished human labels; ``rounds`` limits to those rounds."""
    from sqlalchemy import select

    from app.db.models import AnnotationTask, FeedbackLabel, Game, HumanLabel, Turn
    from learning.retrospect import heuristic_label

    async with db.session() as s:
        q = (
            select(HumanLabel, AnnotationTask.system, Game.round, Game.system, Game.listener_kind)
            .join(AnnotationTask, AnnotationTask.id == HumanLabel.task_id)
            .join(Game, Game.id == HumanLabel.game_id)
            .where(HumanLabel.answered_at.is_not(None), HumanLabel.skipped.is_(False))
            .order_by(HumanLabel.id)
        )
        if rounds is not None:
            q = q.where(Game.round.in_(list(rounds)))
        found = list(await s.execute(q))
        keys = sorted({(h.game_id, h.turn) for h, *_ in found})
        games = sorted({g for g, _ in keys})
        decoded: dict[tuple[str, int], dict[str, int]] = defaultdict(dict)
        heuristics: dict[tuple[str, int], int] = {}
        for k in range(0, len(games), 500):
            part = games[k : k + 500]
            labels = await s.execute(
                select(FeedbackLabel)
                .where(FeedbackLabel.game_id.in_(part))
                .order_by(FeedbackLabel.created_at, FeedbackLabel.id)
            )
            for lab in labels.scalars():  # the newest label of each decoder wins
                decoded[(lab.game_id, lab.turn)][lab.decoder] = lab.label
            targets = {
                gid: cfg.get("targets", [])
                for gid, cfg in await s.execute(
                    select(Game.id, Game.config).where(Game.id.in_(part))
                )
            }
            for t in (await s.execute(select(Turn).where(Turn.game_id.in_(part)))).scalars():
                if t.selection_after is not None:
                    heuristics[(t.game_id, t.turn)] = heuristic_label(
                        t.selection_before, t.selection_after, targets[t.game_id]
                    )
    groups: dict[tuple[str, int | None], list[LabelRow]] = defaultdict(list)
    for h, _task_system, round_, game_system, kind in found:
        system = game_system or (
            "human" if kind == "human" else "unknown"
        )  # as the report names it
        groups[(system, round_)].append(
            LabelRow(
                system,
                round_,
                h.game_id,
                h.turn,
                h.annotator_id,
                None if h.feedback_revised else h.feedback,
                h.action,
            )
        )
    return [
        review(system, round_, rows, decoded, heuristics)
        for (system, round_), rows in sorted(
            groups.items(), key=lambda kv: (kv[0][0], -1 if kv[0][1] is None else kv[0][1])
        )
    ]


# ---------------------------------------------------------------- output


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _k(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def markdown(reviews: Sequence[Review]) -> list[str]:
    """The report's "Human review" section (empty when nobody has labelled turns)."""
    if not reviews:
        return []
    lines = [
        "## Human review",
        "",
        (
            "Annotators judged sampled turns: the speaker's next message as feedback "
            "(positive / neutral / negative) and the listener's action (correct / partly / "
            "wrong). Raw agreement is the mean share of agreeing annotator pairs per turn; "
            "Cohen's kappa is the mean over annotator pairs; Fleiss' kappa is over the turns "
            "with the usual number of annotators. The decoder and the heuristic are compared "
            "with the human majority label (turns without a majority left out); FPR is the "
            "share of turns people did not call positive that the decoder calls positive."
        ),
        "",
        (
            "| system | round | turns | labels | annotators | feedback raw | feedback Cohen κ | "
            "feedback Fleiss κ | action raw | action Fleiss κ | heuristic vs human |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reviews:
        f, a = r.feedback_agreement, r.action_agreement
        lines.append(
            f"| {r.system} | {r.round_label} | {r.turns} | {r.labels} | {r.annotators} | "
            f"{_pct(f.get('raw'))} | {_k(f.get('cohen'))} | {_k(f.get('fleiss'))} | "
            f"{_pct(a.get('raw'))} | {_k(a.get('fleiss'))} | "
            f"{_pct(r.heuristic.get('accuracy'))} |"
        )
    lines += [
        "",
        (
            "| system | round | decoder | turns | accuracy | precision (+) | recall (+) | F1 (+) "
            "| FPR | recall − | recall 0 | recall + |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reviews:
        for d, v in r.decoders.items():
            lines.append(
                f"| {r.system} | {r.round_label} | {d} | {v['n']} | {_pct(v['accuracy'])} | "
                f"{_pct(v['precision'])} | {_pct(v['recall'])} | {_pct(v['f1'])} | "
                f"{_pct(v['fpr'])} | "
                f"{_pct(v['recall_-1'])} | {_pct(v['recall_+0'])} | {_pct(v['recall_+1'])} |"
            )
    for r in reviews:
        for d, v in r.decoders.items():
            lines += [
                "",
                f"**{r.system}, round {r.round_label}, {d} decoder vs people** (rows: people)",
                "",
            ]
            lines.append("| human \\ decoded | − | 0 | + |")
            lines.append("|---|---|---|---|")
            for h in CLASSES:
                lines.append(
                    f"| {FEEDBACK_WORDS[h]} | "
                    + " | ".join(str(v["confusion"][h][p]) for p in CLASSES)
                    + " |"
                )
    lines.append("")
    return lines


def plot(reviews: Sequence[Review], out: Path) -> list[Path]:
    """human-review.png: agreement and decoder figures across rounds, one line per system."""
    if not reviews:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    rounds = sorted({r.round for r in reviews}, key=lambda x: -1 if x is None else x)
    pos = {r: i for i, r in enumerate(rounds)}
    ticks = ["—" if r is None else str(r) for r in rounds]
    systems = sorted({r.system for r in reviews})
    panels = [("feedback Fleiss κ", lambda r: [("people", r.feedback_agreement.get("fleiss"))])]
    panels.append(
        (
            "decoder accuracy vs people",
            lambda r: [(d, r.decoders[d]["accuracy"]) for d in r.decoders],
        )
    )
    panels.append(
        ("decoder FPR vs people", lambda r: [(d, r.decoders[d]["fpr"]) for d in r.decoders])
    )
    panels.append(
        ("heuristic vs people (action)", lambda r: [("heuristic", r.heuristic.get("accuracy"))])
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    for ax, (title, values) in zip(axes, panels):
        for system in systems:
            series: dict[str, list[tuple[int, float]]] = defaultdict(list)
            for r in reviews:
                if r.system == system:
                    for name, v in values(r):
                        if v is not None:
                            series[name].append((pos[r.round], v))
            for name, pts in sorted(series.items()):
                pts.sort()
                label = system if name in ("people", "heuristic") else f"{system} {name}"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set(xlabel="round", title=title)
        ax.set_xticks(range(len(rounds)), ticks)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle("Human review")
    fig.tight_layout()
    path = out / "human-review.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
