"""``multiref export --format hf DIR``: a folder ``datasets.load_from_disk`` opens, with the
interaction and turn levels as splits holding the very rows of the Parquet export, and a dataset
card with the fields, the rounds, the licence and the scrubbing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("datasets")

from tests.conftest import ROOT  # noqa: E402


def test_export_hf_opens_in_datasets_with_a_card(tmp_path, reference):
    from datasets import DatasetDict, load_from_disk
    import pyarrow.parquet as pq

    env = {**os.environ, "MULTIREF_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'hf.sqlite3'}"}
    sample = reference / "respect_games" / "sep_12_24_sample.jsonl"

    def run(*args):
        return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip

    r = run("import", str(sample), "--round", "2")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "hf"
    r = run("export", "--format", "hf", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "100 games" in r.stdout
    ds = load_from_disk(str(out))
    assert isinstance(ds, DatasetDict) and set(ds) == {"interaction", "turn"}
    # the same rows as the Parquet export, column for column
    r = run("export", "--format", "parquet", "--out", str(tmp_path / "pq"))
    assert r.returncode == 0, r.stderr
    for level in ("interaction", "turn"):
        want = pq.read_table(tmp_path / "pq" / f"{level}.parquet").to_pylist()
        assert ds[level].num_rows == len(want) > 0
        assert ds[level].to_list() == want
    assert ds["turn"].num_rows > ds["interaction"].num_rows
    assert ds["turn"][0]["game_turn_id"] == f"{ds['turn'][0]['game_id']}_{ds['turn'][0]['turn']}"
    # the card: front matter, every field of both levels, the rounds, licence and scrubbing
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\n")
    for level in ("interaction", "turn"):
        assert f"## Fields: `{level}`" in card
        for name in ds[level].column_names:
            assert f"| `{name}` |" in card
    assert "| 2 | 100 |" in card  # round 2: the 100 imported games
    assert "## Licence" in card and "## Scrubbing" in card and "PROLIFIC_PID" in card
    assert not {"actor", "prolific_pid", "worker_id"} & set(ds["turn"].column_names)
    summary = json.loads((out / "export.json").read_text())
    assert summary["rounds"] == {"2": 100} and summary["rows"]["interaction"] == 100
    # a second export into the same folder is refused and loses nothing
    r = run("export", "--format", "hf", "--out", str(out))
    assert r.returncode == 2 and "not empty" in r.stderr
    assert load_from_disk(str(out))["interaction"].num_rows == 100
