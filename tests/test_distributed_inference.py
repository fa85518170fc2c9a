"""``multiref retrospect``, ``rescore`` and ``evaluate`` under ``accelerate launch``: two CPU
processes (gloo) each take a share of the work by index, the main process gathers the results
and alone writes them, and the stored rows / JSON are those of a one-process run.

Launched as in tests/test_distributed_train.py (Accelerate's torchrun path, ``--multi_gpu``,
``--device cpu``). Each command runs on its own copy of one small database (three model-listener
games and three human–human games), once in this process and once on two processes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

from tests.test_distributed_train import _one_process, _two_processes  # noqa: E402
from tests.test_learning_retrospect import make_database, run_db  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.model,
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

# π_deployed and the decoder's label-word log-probabilities are floats: the two processes batch
# other actions together (other padding), so they agree to float32 rounding, not bit for bit.
# Labels, actions, token counts and predictions are discrete and must be identical.
REL = 1e-5
ROUNDED = 1.5e-5  # the decoder's log-probabilities are stored rounded to 5 decimals


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny model and one LoRA adapter, shared by the three commands."""
    from policy_worker.tiny import build_tiny_idefics2, make_tiny_lora

    root = tmp_path_factory.mktemp("tiny_shard")
    model = build_tiny_idefics2(root / "model", seed=0)
    return model, make_tiny_lora(model, root / "lora", seed=3)


@pytest.fixture(scope="module")
def games_db(tmp_path_factory, recorded_games) -> Path:
    """Three model-listener games of B-SUP and three human–human games, round 0 (a file)."""
    path = tmp_path_factory.mktemp("shard_db") / "games.sqlite3"
    model_games = [dict(g, _columns={"system": "B-SUP", "round": 0}) for g in recorded_games[:3]]
    human = [
        dict(g, _kind="human", _columns={"round": 0, "split": "test"})
        for g in recorded_games[3:6]
    ]
    make_database(f"sqlite+aiosqlite:///{path}", model_games + human)
    return path


def _copies(games_db: Path, tmp_path: Path) -> tuple[str, str]:
    """Two copies of the database: for the one-process and the two-process run."""
    urls = []
    for name in ("one", "two"):
        shutil.copy(games_db, tmp_path / f"{name}.sqlite3")
        urls.append(f"sqlite+aiosqlite:///{tmp_path / f'{name}.sqlite3'}")
    return urls[0], urls[1]


def _launch(args: list[str]) -> str:
    run = _two_processes(args)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return " ".join(run.stdout.split())


def _rows(url: str, model: type, columns: tuple[str, ...]) -> list[tuple]:
    from sqlalchemy import select

    async def read(db):
        async with db.session() as s:
            return list((await s.execute(select(model))).scalars())

    return sorted(tuple(getattr(r, c) for c in columns) for r in run_db(url, read))


def _split_evenly(per_process: list[int], total: int) -> None:
    """Both processes took a share (Accelerate's split: contiguous, sizes differ by ≤ 1)."""
    assert len(per_process) == 2 and sum(per_process) == total
    assert min(per_process) > 0 and per_process[0] - per_process[1] in (0, 1)


def test_retrospect_on_two_processes_stores_the_labels_of_one(tiny, games_db, tmp_path):
    """The margin scoring (ternary), whose stored log-probabilities differ from action to action
    (the tiny model's generated answers are much alike), so a label stored against the wrong
    action would show. No truncation: the tiny tokenizer's 256 tokens end before the dialogue."""
    from app.db.models import FeedbackLabel

    model, _ = tiny
    one, two = _copies(games_db, tmp_path)
    args = lambda url, out: [  # noqa: E731
        "retrospect", "--all", "--base", str(model), "--database-url", url, "--device", "cpu",
        "--decoder", "ternary", "--decoder-scoring", "margin", "--max-tokens", "0",
        "--batch-size", "8", "--json-out", str(out),
    ]  # fmt: skip
    _one_process(args(one, tmp_path / "one.json"))
    out = _launch(args(two, tmp_path / "two.json"))
    assert out.count("throughput:") == 1  # one process speaks

    cols = ("game_id", "turn", "decoder", "decoder_version", "label", "heuristic", "scores")
    rows1, rows2 = _rows(one, FeedbackLabel, cols), _rows(two, FeedbackLabel, cols)
    assert len(rows1) > 30 and len(rows2) == len(rows1)  # each label written once
    assert len({json.dumps(r[-1]["logp"], sort_keys=True) for r in rows1}) > len(rows1) // 2
    apart = max(
        abs(b[-1][key][w] - a[-1][key][w])
        for a, b in zip(rows1, rows2)
        for key in ("logp", "p")
        for w in a[-1][key]
    )
    print(f"retrospect, 1 vs 2 processes: stored log-probabilities at most {apart:.1e} apart")
    for a, b in zip(rows1, rows2):
        assert b[:-1] == a[:-1]  # the same action, decoder version, label and heuristic
        sa, sb = a[-1], b[-1]
        assert {k: v for k, v in sb.items() if k not in ("logp", "p")} == {
            k: v for k, v in sa.items() if k not in ("logp", "p")
        }
        for key in ("logp", "p"):  # stored rounded to 5 decimals: one unit of it apart at most
            assert sb[key].keys() == sa[key].keys()
            assert all(abs(sb[key][w] - sa[key][w]) <= ROUNDED for w in sa[key]), (sa, sb)
    j1, j2 = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert j1["processes"] == 1 and j1["per_process"] == [len(rows1)]
    assert j2["processes"] == 2
    _split_evenly(j2["per_process"], len(rows1))
    assert f"shares per process: {j2['per_process'][0]}, {j2['per_process'][1]}" in out
    timing = {"seconds", "actions_per_s", "processes", "per_process"}
    assert {k: v for k, v in j2.items() if k not in timing} == {
        k: v for k, v in j1.items() if k not in timing
    }


def test_rescore_on_two_processes_stores_the_scores_of_one(tiny, games_db, tmp_path, kilogram_dir):
    from app.db.models import ActionScore

    model, lora = tiny
    one, two = _copies(games_db, tmp_path)
    args = lambda url, out: [  # noqa: E731
        "rescore", "--adapter", str(lora), "--base", str(model), "--database-url", url,
        "--tangrams", str(kilogram_dir), "--device", "cpu", "--batch-size", "4",
        "--json-out", str(out),
    ]  # fmt: skip
    _one_process(args(one, tmp_path / "one.json"))
    out = _launch(args(two, tmp_path / "two.json"))
    assert out.count("model-listener actions: scored") == 1

    cols = ("game_id", "turn", "checkpoint", "action", "num_tokens", "source")
    floats = ("prob_deployed", "logp_sum")
    rows1 = _rows(one, ActionScore, cols + floats)
    rows2 = _rows(two, ActionScore, cols + floats)
    assert len(rows1) > 10 and len(rows2) == len(rows1)
    k = len(cols)
    assert [r[:k] for r in rows2] == [r[:k] for r in rows1]
    apart = max(abs(y - x) / abs(x) for a, b in zip(rows1, rows2) for x, y in zip(a[k:], b[k:]))
    print(f"rescore, 1 vs 2 processes: π_deployed and log p at most {apart:.1e} apart (relative)")
    for a, b in zip(rows1, rows2):
        assert b[k:] == pytest.approx(a[k:], rel=REL), (a, b)
    j1, j2 = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    _split_evenly(j2["per_process"], len(rows1))
    same = ("actions", "scored", "skipped", "unknown", "checkpoints")
    assert {x: j2[x] for x in same} == {x: j1[x] for x in same}
    assert j1["scored"] == len(rows1) and j2["processes"] == 2

    # a bad checkpoint found by the main process stops both (the other does not wait forever)
    bad = _two_processes(["rescore", "--checkpoint", "nosuch", *args(two, tmp_path / "x.json")[3:]])
    said = " ".join(bad.stdout.split())
    assert bad.returncode != 0 and said.count("cannot rescore: no checkpoint 'nosuch'") == 1, said
    assert not (tmp_path / "x.json").exists()


def test_evaluate_on_two_processes_writes_the_evaluation_of_one(
    tiny, games_db, tmp_path, kilogram_dir
):
    model, lora = tiny
    one, two = _copies(games_db, tmp_path)
    args = lambda url, out: [  # noqa: E731
        "evaluate", "--adapter", str(lora), "--base", str(model), "--database-url", url,
        "--tangrams", str(kilogram_dir), "--device", "cpu", "--batch-size", "4",
        "--mode", "sample", "--out", str(out),
    ]  # fmt: skip
    _one_process(args(one, tmp_path / "one"))
    out = _launch(args(two, tmp_path / "two"))
    assert out.count("written:") == 1  # one writer

    e1 = json.loads((tmp_path / "one" / "evaluation.json").read_text())
    e2 = json.loads((tmp_path / "two" / "evaluation.json").read_text())
    assert e1["summary"]["n"] > 5
    # every sampled prediction (each turn has its own seed) and so every metric is the same
    assert e2["turns"] == e1["turns"]
    assert e2["summary"] == e1["summary"] and e2["heldout"] == e1["heldout"]
    assert e1["run"] == {"processes": 1, "per_process": [e1["summary"]["n"]]}
    assert e2["run"]["processes"] == 2
    _split_evenly(e2["run"]["per_process"], e1["summary"]["n"])
    assert (tmp_path / "two" / "evaluation.png").is_file()
