"""Export games as a Hugging Face ``datasets`` folder with a dataset card (``--format hf``).

The folder is a ``DatasetDict`` saved with ``save_to_disk``: ``datasets.load_from_disk(DIR)``
gives the split ``interaction`` (one row per game) and the split ``turn`` (one row per played
turn), the two levels of the public release, with the very rows ``app.export`` writes (they are
exported to Parquet first, in one consistent snapshot, and read back). ``DIR/README.md`` is the
dataset card: fields, rounds, systems, licence, and what was left out. The raw event log (the
``events`` file of the JSONL / Parquet export) is not part of it: it names participants' seats
and carries every event verbatim.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.export import ExportFilter, export

LEVELS = ("interaction", "turn")
LICENSE = "apache-2.0"  # the licence of the public release this format follows (docs/operators.md)
# Columns that would identify a participant; none is written by app.export today, and any that
# appears there later is dropped here rather than published.
IDENTIFYING = {
    "prolific_pid", "study_id", "session_id", "participant_id", "participant", "worker_id",
    "ip", "ip_address", "user_agent", "completion_code", "email", "pay", "actor",
}  # fmt: skip
FIELDS = {
    "interaction": {
        "game_id": "game identifier (random, not linked to a participant)",
        "turn": "turns in which the speaker spoke",
        "end": "1 if the game ended successfully, else 0 (as in the release)",
        "outcome": "success | failure | aborted",
        "end_reason": "why the game ended",
        "targets": "the target tangrams (sorted ids)",
        "context": "the listener's image order (as in the release)",
        "speaker_order": "the speaker's image order",
        "listener_order": "the listener's image order",
        "clicks": "the selection after each submitted turn (cumulative)",
        "chat": "the speaker's utterances, verbatim",
        "policy_name": "the listener system (human for human listeners)",
        "round": "the deployment round (null: imported or unrounded)",
        "date": "game start, UTC",
        "checkpoint": "the model checkpoint the listener ran",
        "listener_kind": "human | model",
        "source": "live | imported",
        "split": "the tangram split the game drew from",
        "config_index": "index of the game configuration",
        "duration_s": "seconds from start to end",
        "sec_until_send": "per turn: seconds until the speaker sent",
        "sec_until_submit": "per turn: seconds until the listener submitted",
        "incomplete": "true for a game still running at export",
    },
    "turn": {
        "game_turn_id": "<game_id>_<turn>",
        "game_id": "the game",
        "turn": "turn number, from 1",
        "chats": "utterances up to and including this turn's",
        "context": "the listener's image order",
        "targets": "the target tangrams",
        "currently_selected": "the selection before the action",
        "selected": "images the action selected",
        "deselected": "images the action deselected",
        "clicks": "the selection after the action",
        "chat_feedback": "the next utterance (null on the last turn)",
        "action": "the model listener's action text (null for humans)",
        "prob_action": "its probability under the deployed policy",
        "end": "1 if the game ended successfully, else 0",
        "outcome": "the game's outcome",
        "policy_name": "the listener system",
        "round": "the deployment round",
        "date": "game start, UTC",
        "checkpoint": "the checkpoint that decoded this turn",
        "listener_kind": "human | model",
        "sec_until_send": "seconds until the speaker sent",
        "sec_until_submit": "seconds until the listener submitted",
        "auto_sent": "the utterance was sent by the turn timer",
        "auto_submitted": "the selection was submitted by the turn timer",
        "incomplete": "true for a game still running at export",
    },
}


async def export_hf(
    db: Any,
    out: Path,
    flt: ExportFilter | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    release: bool = True,
) -> dict[str, Any]:
    """Write the ``DatasetDict`` and ``README.md`` into ``out``; returns a summary
    (rows per level, rounds, systems, games, seconds). ``release`` (on unless the operator
    turns it off: a dataset folder is made to be published): personal data in the players'
    text becomes typed placeholders (:mod:`app.scrub`), counted in the card."""
    from datasets import Dataset, DatasetDict

    started = time.perf_counter()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: give a new folder for the dataset")
    out.parent.mkdir(parents=True, exist_ok=True)
    flt = flt or ExportFilter()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".hf-export-") as tmp:
        report = await export(
            db, Path(tmp) / "parquet", "parquet", flt, progress=progress, release=release
        )
        levels, dropped = {}, set()
        for level in LEVELS:
            ds = Dataset.from_parquet(str(report.files[level]), keep_in_memory=False)
            bad = [c for c in ds.column_names if c.lower() in IDENTIFYING]
            dropped |= set(bad)
            levels[level] = ds.remove_columns(bad) if bad else ds
        staging = Path(tmp) / "dataset"
        DatasetDict(levels).save_to_disk(str(staging))
        summary = _summary(levels, report.games, flt, sorted(dropped))
        summary["scrubbed"] = report.scrubbed if release else None
        (staging / "README.md").write_text(dataset_card(levels, summary), encoding="utf-8")
        (staging / "export.json").write_text(json.dumps(summary, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        shutil.move(str(staging), str(out))
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


def _summary(levels: dict[str, Any], games: int, flt: ExportFilter, dropped: list[str]) -> dict:
    inter = levels["interaction"]
    rounds = Counter("none" if r is None else str(r) for r in inter["round"])
    systems = Counter(inter["policy_name"])
    return {
        "games": games,
        "rows": {k: v.num_rows for k, v in levels.items()},
        "rounds": dict(sorted(rounds.items())),
        "systems": dict(sorted(systems.items())),
        "filter": flt.json(),
        "dropped_columns": dropped,
        "exported_at": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def dataset_card(levels: dict[str, Any], summary: dict[str, Any]) -> str:
    """The README.md of the folder: YAML front matter the Hub reads, then the card."""
    lines = [
        "---",
        f"license: {LICENSE}",
        "language:",
        "- en",
        "pretty_name: MultiRef Live games",
        "task_categories:",
        "- image-text-to-text",
        "tags:",
        "- multi-turn",
        "- reference-games",
        "- tangrams",
        "- learning-from-interaction",
        "---",
        "",
        "# MultiRef Live games",
        "",
        "Games of the multi-reference tangram game: a speaker describes several target tangrams "
        "among ten, a listener (a person or a model) selects them over several turns. Two "
        "levels, in the format of the public release of the ReSpect study:",
        "",
        "```python",
        "from datasets import load_from_disk",
        "",
        'ds = load_from_disk("THIS_FOLDER")',
        'ds["interaction"]  # one row per game',
        'ds["turn"]         # one row per played turn',
        "```",
        "",
        f"Exported {summary['exported_at']} UTC: {summary['games']} games, "
        f"{summary['rows']['interaction']} interaction rows, {summary['rows']['turn']} turn rows.",
        "",
        "## Rounds and systems",
        "",
        "| round | games |",
        "|---|---|",
        *[f"| {r} | {n} |" for r, n in summary["rounds"].items()],
        "",
        "| system (policy_name) | games |",
        "|---|---|",
        *[f"| {s} | {n} |" for s, n in summary["systems"].items()],
        "",
        f"Filter applied at export: `{json.dumps(summary['filter'])}`.",
        "",
    ]
    for level in LEVELS:
        ds = levels[level]
        lines += [f"## Fields: `{level}`", "", "| field | type | meaning |", "|---|---|---|"]
        for name, feature in ds.features.items():
            meaning = FIELDS[level].get(name, "")
            lines.append(f"| `{name}` | `{_type(feature)}` | {meaning} |")
        lines.append("")
    lines += [
        "## Licence",
        "",
        "Apache-2.0, the licence of the public release this format follows.",
        "",
        "## Scrubbing",
        "",
        "- No participant identifier is published: crowd-platform ids (`PROLIFIC_PID`, "
        "`STUDY_ID`, `SESSION_ID`), participant and worker ids, IP addresses, user agents, "
        "completion codes and pay stay in the server's database. Game ids are random and not "
        "linked to a participant.",
        "- The raw event log (the `events` file of the JSONL / Parquet export) is left out.",
    ]
    if summary.get("scrubbed") is not None:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(summary["scrubbed"].items()) if v)
        lines.append(
            "- Personal data typed by players (e-mail addresses, phone numbers, URLs, "
            "crowd-platform ids, handles) was replaced with typed placeholders such as `[EMAIL]` "
            f"({counts or 'none found'}); all other text is verbatim. Read the utterances before "
            "publishing if the study's consent does not cover free text."
        )
    else:
        lines.append(
            "- Utterances are verbatim: no text was rewritten or filtered (exported without "
            "scrubbing). Read them before publishing if the study's consent does not cover "
            "free text."
        )
    if summary["dropped_columns"]:
        lines.append(f"- Columns dropped as identifying: {', '.join(summary['dropped_columns'])}.")
    return "\n".join(lines) + "\n"


def _type(feature: Any) -> str:
    dtype = getattr(feature, "dtype", None)
    if dtype:
        return str(dtype)
    inner = getattr(feature, "feature", None)
    if inner is not None:
        return f"list<{_type(inner)}>"
    return type(feature).__name__


__all__ = ["LEVELS", "dataset_card", "export_hf"]
