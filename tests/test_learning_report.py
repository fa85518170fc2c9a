"""The §6 report: numbers per system and round checked against the recorded games, the Wilson
interval by hand, and the rendered Markdown and PNG plots."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from app.db.gamelog import append, load_state
from app.db.models import FeedbackLabel
from app.game import rules as R
from learning.report import RESET_RE, collect, markdown, wilson_interval
from learning.retrospect import heuristic_label
from tests.test_learning_retrospect import make_database, run_db

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning")]


def test_wilson_interval_by_hand():
    # 8/10, z = 1.96: centre (0.8 + 0.19208) / 1.38416 = 0.716824,
    # half 1.96 / 1.38416 · sqrt(0.016 + 0.0096040) = 0.226494 -> (0.490330, 0.943318)
    lo, hi = wilson_interval(8, 10)
    assert (lo, hi) == pytest.approx((0.490157, 0.943319), abs=1e-5)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_reset_phrases():
    for text in (
        "Try again please",
        "let's start over",
        "deselect all",
        "reset",
        "clear everything",
    ):
        assert RESET_RE.search(text), text
    for text in ("choose the bird", "the one at the top right", "correct, now the boat"):
        assert not RESET_RE.search(text), text


def _expected(games: list[dict]) -> dict:
    completed = [g for g in games]
    words = [re.findall(r"[a-z0-9']+", u.lower()) for g in games for u in g["utterances"]]
    good = picked = 0
    for g in games:
        before: set[str] = set()
        for after in g["selection_after_turn"]:
            new = set(after) - before
            picked += len(new)
            good += len(new & set(g["targets"]))
            before = set(after)
    return {
        "success": sum(g["outcome"] == "successful" for g in completed) / len(completed),
        "turns": sum(g["num_turns"] for g in completed) / len(completed),
        "click": good / picked,
        "vocab": len({w for ws in words for w in ws}),
        "words": sum(map(len, words)) / len(words),
    }


@pytest.fixture
def report_db(tmp_path, recorded_games):
    url = f"sqlite+aiosqlite:///{tmp_path / 'r.sqlite3'}"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "manifest.json").write_text(json.dumps({"best_exact_match": 0.42}))
    from app.deploy import checkpoint_id

    ck = checkpoint_id("B-SUP", 1, "base", str(adapter))
    groups = {
        ("B-SUP", 0): recorded_games[0:10],
        ("B-SUP", 1): recorded_games[10:20],
        ("human", 0): recorded_games[20:25],
        ("B-RL", 1): recorded_games[25:30],
    }
    games = []
    for (system, rnd), gs in groups.items():
        for g in gs:
            if system == "human":
                games.append(dict(g, _kind="human", _columns={"round": rnd}))
            else:
                cols = {"system": system, "round": rnd}
                if (system, rnd) == ("B-SUP", 1):
                    cols["checkpoint"] = ck
                games.append(dict(g, _columns=cols))
    # one game of B-SUP round 0 aborted after two turns (left out of success and turns)
    partial = dict(
        recorded_games[30],
        game_id="aborted-game",
        utterances=recorded_games[30]["utterances"][:2],
        selection_after_turn=recorded_games[30]["selection_after_turn"][:2],
        _columns={"system": "B-SUP", "round": 0},
    )
    games.append(partial)
    make_database(url, games)

    async def finish(db):
        from app.deploy import deploy_checkpoint

        async with db.session() as s, s.begin():
            state = await load_state(s, "aborted-game")
            new, events = R.step(state, R.AdminEnd(at=state.created_at + 500))
            await append(s, state, events, new, actor="test")
            await deploy_checkpoint(s, "B-SUP", 1, "base", str(adapter))
            for g in recorded_games[0:10]:  # binary labels = the heuristic, ternary all neutral
                before: list[str] = []
                for turn, after in enumerate(g["selection_after_turn"][:-1], start=1):
                    h = heuristic_label(before, after, g["targets"])
                    for decoder, label in (("binary", h if h else -1), ("ternary", 0)):
                        s.add(
                            FeedbackLabel(
                                game_id=g["game_id"][:32],
                                turn=turn,
                                decoder=decoder,
                                decoder_version="v",
                                label=label,
                                heuristic=h,
                                scores={},
                                created_at=1.0,
                            )
                        )
                    before = after

    run_db(url, finish)
    return url, groups


def test_report_numbers_per_system_and_round(report_db, tmp_path):
    url, groups = report_db
    results = run_db(url, lambda db: collect(db))
    by = {(r.system, r.round): r for r in results}
    assert set(by) == set(groups)
    for key, games in groups.items():
        r, e = by[key], _expected(games)
        assert r.completed == len(games)
        assert r.success_rate == pytest.approx(e["success"])
        assert r.success_ci == pytest.approx(wilson_interval(r.successes, r.completed))
        assert r.turns_per_game == pytest.approx(e["turns"])
        if key != ("B-SUP", 0):  # round 0 also holds the aborted game's words and clicks
            assert r.click_accuracy == pytest.approx(e["click"])
            assert r.vocabulary == e["vocab"] and r.mean_utterance_words == pytest.approx(
                e["words"]
            )
    assert by[("B-SUP", 0)].aborted == 1 and by[("B-SUP", 0)].games == 11
    assert by[("B-SUP", 1)].heldout_exact_match == pytest.approx(0.42)
    conf = by[("B-SUP", 0)].confusion
    n = sum(g["num_turns"] - 1 for g in groups[("B-SUP", 0)])
    assert sum(sum(row.values()) for row in conf["binary"].values()) == n
    assert conf["binary"][1][1] + conf["binary"][-1][-1] + conf["binary"][0][-1] == n
    assert sum(conf["ternary"][h][0] for h in (-1, 0, 1)) == n
    only_1 = run_db(url, lambda db: collect(db, [1]))
    assert {r.round for r in only_1} == {1}


def test_report_renders_markdown_and_plots(report_db, tmp_path):
    from typer.testing import CliRunner

    from app.cli import app

    url, _ = report_db
    out = tmp_path / "report"
    result = CliRunner().invoke(
        app, ["report", "--out", str(out), "--database-url", url], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())  # the terminal wraps long paths anywhere
    assert "MultiRef: systems and rounds" in printed and "(4 plots)" in printed
    for name in ("success.png", "turns.png", "confusion.png", "language.png"):
        png = out / name
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    md = (out / "report.md").read_text()
    assert "| system | round | games | success |" in md and "![success](success.png)" in md
    assert "Decoder confusion" in md and "binary" in md
    metrics = json.loads((out / "metrics.json").read_text())
    assert {(m["system"], m["round"]) for m in metrics} == {
        ("B-SUP", 0),
        ("B-SUP", 1),
        ("human", 0),
        ("B-RL", 1),
    }
    # --rounds limits the report
    result = CliRunner().invoke(
        app, ["report", "--out", str(tmp_path / "r1"), "--rounds", "1", "--database-url", url]
    )
    assert result.exit_code == 0
    assert {m["round"] for m in json.loads((tmp_path / "r1" / "metrics.json").read_text())} == {1}


def test_markdown_without_labels_or_completed_games():
    from learning.report import SystemRound

    md = markdown([SystemRound(system="X", round=None, games=1, aborted=1)], [Path("success.png")])
    assert "| X | — | 0 (+1 aborted) | — |" in md


def test_report_confusion_uses_the_heuristic_of_the_turns_not_the_stored_one(report_db):
    """A label stored with a stale heuristic (an older rule) must not reach the confusion: the
    report recomputes §8's heuristic from the turns and targets; precision/recall/F1 follow."""
    from sqlalchemy import update

    from learning.retrospect import metrics_from_confusion

    url, groups = report_db

    async def corrupt(db):
        async with db.session() as s, s.begin():
            await s.execute(update(FeedbackLabel).values(heuristic=1))

    run_db(url, corrupt)
    conf = {(r.system, r.round): r for r in run_db(url, lambda db: collect(db))}[
        ("B-SUP", 0)
    ].confusion["binary"]
    expected = {-1: 0, 0: 0, 1: 0}
    for g in groups[("B-SUP", 0)]:
        before: list[str] = []
        for after in g["selection_after_turn"][:-1]:
            expected[heuristic_label(before, after, g["targets"])] += 1
            before = after
    assert {h: sum(conf[h].values()) for h in (-1, 0, 1)} == expected
    assert expected[0] and expected[-1]  # the sample has these classes: the check can fail
    m = metrics_from_confusion(conf)
    assert m["per_class"][1]["precision"] == 1.0 and m["per_class"][1]["recall"] == 1.0
    assert m["per_class"][0]["recall"] == 0.0  # the binary labels never say 0
