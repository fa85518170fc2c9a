"""bench/gpu_check.sh --dry-run: the accelerator check's steps at tiny sizes on the CPU, with the
packages an accelerator machine may lack (rich, fastapi, sqlalchemy, typer, …) made unimportable,
so the GPU run cannot fail on an import the CI machine happens to have."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("accelerate")

ROOT = Path(__file__).resolve().parents[1]
ABSENT = ("rich", "fastapi", "sqlalchemy", "typer", "alembic", "starlette", "uvicorn", "datasets",
          "aiosqlite", "asyncpg", "psycopg2", "playwright", "matplotlib")  # fmt: skip
SHIM = f'''
import importlib.abc, importlib.util, sys
ABSENT = {ABSENT!r}
def _absent(name):
    return name.split(".")[0] in ABSENT
_find_spec = importlib.util.find_spec
def find_spec(name, package=None):  # what "is X installed?" checks ask: no
    return None if _absent(name) else _find_spec(name, package)
importlib.util.find_spec = find_spec
class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if _absent(name):
            raise ModuleNotFoundError(f"No module named {{name!r}} (absent on the GPU machine)", name=name)
sys.meta_path.insert(0, _Absent())
'''


@pytest.mark.model
def test_gpu_check_dry_run_passes_without_the_server_packages(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(SHIM)
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": str(tmp_path),
        "LOG": str(tmp_path / "gpu_check.log"),
    }
    run = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert "rich: not available" in out  # the shim worked: the tables below are plain text
    assert "policy latency — tiny Idefics2" in out and "p50 ms" in out
    assert "learning loop throughput — tiny Idefics2" in out and "SUP training" in out
    assert "train smoke: 2 processes on cpu" in out and ": OK" in out
    assert "all steps passed" in out
    assert (tmp_path / "gpu_check.log").read_text().count("exit 0 after") == 3
