"""Offline evaluation and checkpoint selection (MULTIREF.md §8): the reference's per-turn metrics
by hand, held-out human turns filtered to good moves, the sample / greedy selection metric wired
through the training config, and ``multiref evaluate`` end to end on a tiny model."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from learning.evaluate import (  # noqa: E402
    heldout_metric,
    load_heldout_turns,
    predict,
    selection_accuracy,
    summarize,
    turn_metrics,
)
from tests.test_learning_retrospect import make_database, run_db  # noqa: E402

pytestmark = [
    pytest.mark.model,
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


def test_turn_metrics_by_hand():
    m = turn_metrics("deselect A select B C", "deselect A select B")
    assert m["exact_match"] == 0 and m["select_accuracy"] == 0 and m["deselect_accuracy"] == 1
    assert m["select_accuracy_on_select_turns"] == 0
    assert m["deselect_accuracy_on_deselect_turns"] == 1
    assert m["true_positive_rate"] == pytest.approx(2 / 3) and m["false_positive_rate"] == 0
    m = turn_metrics("select B", "select B D E")
    assert m["exact_match"] == 0 and m["deselect_accuracy"] == 1
    assert m["deselect_accuracy_on_deselect_turns"] is None  # the human deselected nothing
    assert m["true_positive_rate"] == 1 and m["false_positive_rate"] == 2
    assert turn_metrics("select B", "select B")["exact_match"] == 1
    with pytest.raises(ValueError, match="did nothing"):
        turn_metrics("nothing", "select A")
    s = summarize(
        [(1, "select A", "select A"), (1, "select B", "select C"), (2, "deselect A", "deselect A")]
    )
    assert s["n"] == 3 and s["exact_match"] == pytest.approx(2 / 3)
    assert s["select_accuracy_on_select_turns"] == pytest.approx(1 / 2)
    assert s["deselect_accuracy_on_deselect_turns"] == 1
    assert s["false_positive_rate"] == pytest.approx(1 / 3)
    assert s["by_turn"] == {1: {"n": 2, "exact_match": 0.5}, 2: {"n": 1, "exact_match": 1.0}}


def _good_turns(games: list[dict], good_only: bool = True) -> int:
    """Counted here from the records: a select of targets only or a deselect of non-targets only."""
    n = 0
    for g in games:
        before: set[str] = set()
        for sel in g["selection_after_turn"]:
            after, targets = set(sel), set(g["targets"])
            new, gone = after - before, before - after
            good = (new and new <= targets) or (gone and not gone & targets)
            n += bool(new or gone) and (good or not good_only)
            before = after
    return n


@pytest.fixture(scope="module")
def human_db(tmp_path_factory, recorded_games):
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('eval') / 'h.sqlite3'}"
    games = [
        dict(g, _kind="human", _columns={"split": "test" if i < 3 else "dev", "round": 0})
        for i, g in enumerate(recorded_games[:6])
    ]
    games.append(dict(recorded_games[6], _columns={"system": "B-SUP", "round": 0}))  # not human
    make_database(url, games)
    return url, recorded_games[:6]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from policy_worker.model import load_policy
    from policy_worker.tiny import build_tiny_idefics2, make_tiny_lora

    root = tmp_path_factory.mktemp("tiny_eval")
    model = build_tiny_idefics2(root / "model", seed=0)
    lora = make_tiny_lora(model, root / "lora", seed=3)
    return model, lora, load_policy(model, adapters={"a": lora}, dtype="float32", device="cpu")


def test_heldout_turns_are_good_human_moves(human_db):
    url, games = human_db
    examples, stats = run_db(url, lambda db: load_heldout_turns(db))
    assert len(examples) == _good_turns(games) == stats["count"] > 0
    assert {e.listener_kind for e in examples} == {"human"}
    assert "nothing" not in {e.action for e in examples}
    every, _ = run_db(url, lambda db: load_heldout_turns(db, good_only=False))
    assert len(every) == _good_turns(games, good_only=False) > len(examples)
    test, _ = run_db(url, lambda db: load_heldout_turns(db, split="test"))
    assert len(test) == _good_turns(games[:3])
    few, _ = run_db(url, lambda db: load_heldout_turns(db, limit=5, seed=1))
    again, _ = run_db(url, lambda db: load_heldout_turns(db, limit=5, seed=1))
    assert [e.key() for e in few] == [e.key() for e in again] and len(few) == 5


def test_selection_modes_and_their_wiring_through_the_config(human_db, tiny, kilogram_dir):
    from learning.train import exact_match
    from policy_worker.gamedata import TangramImages

    url, _ = human_db
    _, _, policy = tiny
    examples, _ = run_db(url, lambda db: load_heldout_turns(db, limit=12, seed=0))
    images = TangramImages(kilogram_dir).images
    # greedy is the former metric, exactly
    greedy = selection_accuracy(policy, examples, images, "greedy", adapter="a")
    assert greedy == exact_match(policy, examples, images, adapter="a")
    # sample: T = 1 without grammar, a fixed seed per turn: reproducible, never "nothing"
    a = predict(policy, examples, images, "sample", seed=5, adapter="a")
    assert a == predict(policy, examples, images, "sample", seed=5, adapter="a", batch_size=5)
    assert "nothing" not in a
    assert a != predict(policy, examples, images, "sample", seed=6, adapter="a")
    sampled = selection_accuracy(policy, examples, images, "sample", seed=5, adapter="a")
    assert sampled == sum(p == e.action for p, e in zip(a, examples)) / len(examples)
    # what fit() calls: the config's selection (sample when the config does not say)
    with policy.use_adapter("a"):
        cfg = SimpleNamespace(seed=5, eval_batch_size=4, max_new_tokens=10)
        assert heldout_metric(policy, examples, images, cfg) == sampled
        cfg.selection = "greedy"
        assert heldout_metric(policy, examples, images, cfg) == greedy
        cfg.selection = "vote"
        with pytest.raises(ValueError, match="sample or greedy"):
            heldout_metric(policy, examples, images, cfg)
    assert selection_accuracy(policy, [], images) is None


def test_evaluate_command_prints_writes_json_and_plot(human_db, tiny, kilogram_dir, tmp_path):
    from typer.testing import CliRunner

    from app.cli import app

    url, games = human_db
    model, lora, _ = tiny
    out = tmp_path / "eval"
    args = [
        "evaluate", "--adapter", str(lora), "--base", str(model), "--database-url", url,
        "--tangrams", str(kilogram_dir), "--device", "cpu", "--split", "test", "--out", str(out),
    ]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())
    for name in ("exact match", "select accuracy", "deselect accuracy", "true positive rate",
                 "false positive rate", "exact match by turn"):
        assert name in printed, name
    report = json.loads((out / "evaluation.json").read_text())
    n = _good_turns(games[:3])
    assert report["summary"]["n"] == n == len(report["turns"])
    assert report["summary"]["mode"] == "sample"
    matches = sum(t["human"] == t["predicted"] for t in report["turns"])
    assert report["summary"]["exact_match"] == pytest.approx(matches / n)
    assert sum(v["n"] for v in report["summary"]["by_turn"].values()) == n
    png = (out / "evaluation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # a clear one-line error for a bad mode, and nothing to evaluate
    bad = CliRunner().invoke(app, [*args[:-2], "--mode", "beam"])
    assert bad.exit_code != 0 and "sample or greedy" in bad.output
    none = CliRunner().invoke(app, [*args[:-4], "--split", "nosuchsplit"])
    assert none.exit_code == 1 and "no held-out human turns" in none.output
    assert Path(lora / "adapter_config.json").is_file()


def test_fit_selects_by_sampled_accuracy_and_ties_go_to_the_earlier_epoch(
    tiny, kilogram_dir, tmp_path
):
    """Through fit(): with a learning rate of 0 every epoch scores the same (fixed per-turn
    seeds), so the kept epoch is the first; each epoch's number is the sampled accuracy."""
    from learning.train import attach_adapter, fit
    from policy_worker.gamedata import TangramImages
    from policy_worker.model import load_policy
    from tests.test_learning_train import synthetic, tiny_config

    model, _, _ = tiny
    tangram_ids = sorted(p.stem for p in Path(kilogram_dir).glob("*.svg"))[:10]
    images = TangramImages(kilogram_dir).images
    policy = load_policy(model, dtype="float32", device="cpu")
    config = tiny_config(epochs=3, learning_rate=0.0, selection="sample", seed=7)
    attach_adapter(policy, config, None)
    held = synthetic(tangram_ids, 6, "h")
    result = fit(policy, config, synthetic(tangram_ids, 4, "t"), held, images, tmp_path / "o")
    scores = [m.heldout_exact_match for m in result.metrics]
    expected = selection_accuracy(policy, held, images, "sample", seed=7, batch_size=8)
    assert scores == [expected] * 4  # epoch 0 (before training) and epochs 1–3
    assert result.best_epoch == 1 and result.best_exact_match == expected
