"""``multiref train`` under ``accelerate launch``: two CPU processes (gloo) train the same
adapter as one, and a run stopped after an epoch on two processes resumes on one.

The launcher is Accelerate's own (its torchrun path: ``--multi_gpu``; ``--cpu`` alone starts a
single process unless MPI is installed); ``--device cpu`` makes the processes pick gloo.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

from tests.test_learning_retrospect import make_database, run_db  # noqa: E402

pytestmark = [
    pytest.mark.model,
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

ROOT = Path(__file__).resolve().parents[1]
# Float32 on the CPU: two processes sum the same per-example gradients in another order (and
# pad other micro-batches), so the adapters agree to rounding, not bit for bit. One Adam step
# moves a weight by up to the learning rate (1e-3 here); the adapters must agree 100× closer.
ATOL = 1e-5
CONFIG = """
epochs = 2
effective_batch_size = 4
micro_batch_size = 1
eval_before_training = false
learning_rate = 0.001
warmup_steps = 0
lr_scheduler = "constant"
lora_dropout = 0.0
max_heldout_turns = 2
eval_batch_size = 2
"""


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from policy_worker.tiny import build_tiny_idefics2

    return build_tiny_idefics2(tmp_path_factory.mktemp("tiny_dist"), seed=0)


@pytest.fixture(scope="module")
def round_db(tmp_path_factory, recorded_games, tiny_dir) -> str:
    """One model game of B-SUP (labelled) and two human–human games (the seed task)."""
    from policy_worker.model import load_policy
    from tests.test_learning_datasets import _label_and_log

    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('dist_db') / 'round.sqlite3'}"
    model_games = [dict(recorded_games[0], _columns={"system": "B-SUP", "round": 0})]
    human = [dict(g, _kind="human", _columns={"round": 0}) for g in recorded_games[2:5]]
    make_database(url, model_games + human)
    processor = load_policy(tiny_dir, dtype="float32", device="cpu").processor
    run_db(url, lambda db: _label_and_log(db, processor))
    return url


def _args(url, tiny_dir, kilogram_dir, config, out, *extra) -> list[str]:
    return [
        "train", "--system", "B-SUP", "--round", "0", "--base", str(tiny_dir),
        "--database-url", url, "--tangrams", str(kilogram_dir), "--config", str(config),
        "--out", str(out), "--device", "cpu", *extra,
    ]  # fmt: skip


def _one_process(args: list[str]) -> None:
    from typer.testing import CliRunner

    from app.cli import app

    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(args: list[str]) -> subprocess.CompletedProcess:
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "-m", "app.cli", *args,
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    return subprocess.run(launch, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _adapter(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b) and a
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_two_processes_train_the_same_adapter_and_resume_on_one(
    tiny_dir, round_db, kilogram_dir, tmp_path
):
    config = tmp_path / "tiny.toml"
    config.write_text(CONFIG)
    one, two = tmp_path / "one", tmp_path / "two"

    # one process, stopped after epoch 1 (its state kept aside), then resumed to the end
    _one_process(_args(round_db, tiny_dir, kilogram_dir, config, one, "--stop-after-epoch", "1"))
    one_epoch1 = _adapter(one / "state" / "adapter.safetensors")
    shutil.copy(one / "state" / "adapter.safetensors", tmp_path / "one_epoch1.safetensors")
    _one_process(_args(round_db, tiny_dir, kilogram_dir, config, one, "--resume"))
    m1 = json.loads((one / "manifest.json").read_text())
    assert m1["complete"] and m1["processes"] == 1

    # two processes under accelerate launch, stopped after epoch 1
    run = _two_processes(_args(round_db, tiny_dir, kilogram_dir, config, two, "--stop-after-epoch", "1"))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count("adapter written to") == 1  # one process speaks and writes
    m2 = json.loads((two / "manifest.json").read_text())
    assert m2["processes"] == 2 and not m2["complete"]
    assert m2["examples_per_process_per_step"] == 2
    # the metrics are reduced over both processes: the whole epoch, the same mean loss
    e1, e2 = m1["metrics"][0], m2["metrics"][0]
    assert e1["epoch"] == e2["epoch"] == 1
    # 5 examples: steps of 4 and 1 (the second leaves process 1 without a share)
    assert e2["examples"] == e1["examples"] == 5 and e2["steps"] == e1["steps"] == 2
    assert e2["loss"] == pytest.approx(e1["loss"], rel=1e-5)
    two_epoch1 = _adapter(two / "state" / "adapter.safetensors")
    moved = _max_diff(one_epoch1, _adapter(one / "state" / "adapter.safetensors"))
    apart = _max_diff(one_epoch1, two_epoch1)
    print(f"epoch 2 moved the adapter by {moved:.2e}; 1 vs 2 processes after epoch 1: {apart:.2e}")
    assert moved > 100 * ATOL, moved  # an epoch moves the weights far more than the tolerance
    assert apart < ATOL, apart

    # the two-process run resumes on one process and ends where the one-process run ended
    _one_process(_args(round_db, tiny_dir, kilogram_dir, config, two, "--resume"))
    m3 = json.loads((two / "manifest.json").read_text())
    assert m3["complete"] and m3["processes"] == 1 and m3["resumed_from_epoch"] == 1
    assert m3["metrics"][1]["loss"] == pytest.approx(m1["metrics"][1]["loss"], rel=1e-5)
    final_one = _adapter(one / "state" / "adapter.safetensors")
    assert _max_diff(final_one, _adapter(two / "state" / "adapter.safetensors")) < ATOL
    assert _max_diff(_adapter(one / "adapter_model.safetensors"), _adapter(two / "adapter_model.safetensors")) < ATOL  # fmt: skip
