"""Published games are trainable: released-format records (tangram ids written as file names,
``page7-40.png``) go through ``multiref import``, ``retrospect`` and ``train`` on a tiny model, the
database holds one canonical id, and export writes the release's convention for every game.

Before the fix, training crashed with ``FileNotFoundError: no image for tangram page7-40.png``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from app.tangrams.store import canonical_id, release_id  # noqa: E402
from tests.test_learning_retrospect import run_db  # noqa: E402

pytestmark = [
    pytest.mark.model,
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

TINY_TARGETS = r".*(text_model.*\.(q_proj|v_proj)|lm_head)$"


def test_canonical_and_release_ids():
    assert canonical_id("page7-40.png") == "page7-40" == canonical_id("page7-40")
    assert canonical_id("page7-40.SVG") == "page7-40" and canonical_id(".png") == ".png"
    assert release_id("page7-40") == "page7-40.png" == release_id("page7-40.png")


def release_record(game: dict, policy: str) -> dict:
    """A sample game in the public release's interaction shape, ids as PNG file names."""
    png = lambda ids: [f"{t}.png" for t in ids]  # noqa: E731
    return {
        "game_id": game["game_id"],
        "turn": game["num_turns"],
        "end": 1 if game["outcome"] == "successful" else 0,
        "targets": png(game["targets"]),
        "context": png(game["listener_order"]),
        "clicks": [png(s) for s in game["selection_after_turn"]],
        "chat": game["utterances"],
        "policy_name": policy,
        "round": 0,
        "date": game["created_at"],
    }


def test_released_games_import_train_and_export_in_one_convention(
    tmp_path, recorded_games, kilogram_dir
):
    from sqlalchemy import select
    from typer.testing import CliRunner

    from app.cli import app
    from app.db.models import Game, Turn
    from policy_worker.tiny import build_tiny_idefics2

    tiny = build_tiny_idefics2(tmp_path / "tiny", seed=0)
    url = f"sqlite+aiosqlite:///{tmp_path / 'published.sqlite3'}"
    records = [release_record(g, "B-SUP") for g in recorded_games[:3]]
    records.append(release_record(recorded_games[3], "human"))  # the held-out human turns
    path = tmp_path / "interaction.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    run = CliRunner()

    result = run.invoke(app, ["import", str(path), "--database-url", url], catch_exceptions=False)
    assert result.exit_code == 0, result.output

    async def stored(db):
        async with db.session() as s:
            games = (await s.execute(select(Game))).scalars().all()
            turns = (await s.execute(select(Turn))).scalars().all()
            return [g.config for g in games], [(t.selection_before, t.selection_after) for t in turns]

    configs, turns = run_db(url, stored)
    assert len(configs) == 4
    ids = {t for c in configs for key in ("context", "targets", "listener_order") for t in c[key]}
    ids |= {t for pair in turns for sel in pair if sel for t in sel}
    assert ids and not any(t.endswith(".png") for t in ids)  # one canonical id in the database
    assert ids <= {p.stem for p in Path(kilogram_dir).glob("*.svg")}

    base = ["--base", str(tiny), "--database-url", url, "--device", "cpu"]
    # the tiny decoder is random: a margin that calls every action positive gives SUP its data
    retro = ["retrospect", "--all", "--decoder-scoring", "margin", "--margin=-1e9", *base]
    result = run.invoke(app, retro, catch_exceptions=False)
    assert result.exit_code == 0, result.output

    config = tmp_path / "tiny.toml"
    config.write_text(
        "epochs = 1\nmicro_batch_size = 4\neffective_batch_size = 8\nmax_heldout_turns = 2\n"
        f"lora_targets = '{TINY_TARGETS}'\nwarmup_steps = 1\n"
    )
    out = tmp_path / "B-SUP-r0"
    args = ["train", "--system", "B-SUP", "--round", "0", "--tangrams", str(kilogram_dir)]
    args += ["--config", str(config), "--out", str(out), *base]
    result = run.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["data"]["train"]["games"] >= 1
    assert (out / "adapter_model.safetensors").is_file()

    # export: every tangram id in the release's convention, the same as the imported file's
    exported = tmp_path / "export"
    result = run.invoke(app, ["export", "--out", str(exported), "--database-url", url])
    assert result.exit_code == 0, result.output
    rows = {
        r["game_id"]: r
        for r in map(json.loads, (exported / "interaction.jsonl").read_text().splitlines())
    }
    for rec in records:
        row = rows[rec["game_id"]]
        assert row["context"] == rec["context"] and row["clicks"] == [sorted(c) for c in rec["clicks"]]
        assert row["targets"] == sorted(rec["targets"])
    for line in (exported / "turn.jsonl").read_text().splitlines():
        turn = json.loads(line)
        for key in ("context", "targets", "currently_selected", "selected", "deselected", "clicks"):
            assert all(t.endswith(".png") for t in turn[key]), key


def test_rescore_fills_pi_deployed_for_imported_games(tmp_path, recorded_games, kilogram_dir):
    """Imported games arrive without π_deployed: ``multiref rescore`` scores each action under
    the checkpoint that produced it (the record's), reports those with none, scores them under
    ``--adapter``, skips what is done, and training reads the numbers back."""
    from sqlalchemy import select
    from typer.testing import CliRunner

    from app.cli import app
    from app.db.models import ActionScore
    from app.deploy import deploy_checkpoint
    from learning.rescore import load_deployed_probs
    from policy_worker.decoding import DecodeRequest
    from policy_worker.gamedata import TangramImages, prompt_game
    from policy_worker.model import load_policy
    from policy_worker.tiny import build_tiny_idefics2, make_tiny_lora
    from tests.test_policy_model import _full_forward_logps

    tiny = build_tiny_idefics2(tmp_path / "tiny", seed=0)
    lora = make_tiny_lora(tiny, tmp_path / "lora", seed=1)
    url = f"sqlite+aiosqlite:///{tmp_path / 'rescore.sqlite3'}"
    games = recorded_games[:3]

    async def deploy(db):
        await db.migrate()
        async with db.session() as s, s.begin():
            return (await deploy_checkpoint(s, "B-SUP", 1, str(tiny), str(lora))).id

    ck = run_db(url, deploy)
    records = [release_record(g, "B-SUP") for g in games]
    records[0]["checkpoint"] = ck  # one game names the checkpoint that played it
    path = tmp_path / "interaction.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    run = CliRunner()
    assert run.invoke(app, ["import", str(path), "--database-url", url]).exit_code == 0

    common = ["--base", str(tiny), "--database-url", url, "--tangrams", str(kilogram_dir)]
    common += ["--device", "cpu"]
    first = run.invoke(app, ["rescore", *common], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    n = [g["num_turns"] for g in games]
    out = " ".join(first.output.split())
    assert f"{sum(n)} model-listener actions: scored {n[0]}" in out
    assert f"no known checkpoint {n[1] + n[2]}" in out and "--adapter PATH" in out

    second = run.invoke(app, ["rescore", "--adapter", str(lora), *common], catch_exceptions=False)
    assert second.exit_code == 0, second.output
    assert f"scored {sum(n)}, already scored 0" in " ".join(second.output.split())
    again = run.invoke(app, ["rescore", "--adapter", str(lora), *common], catch_exceptions=False)
    assert f"scored 0, already scored {sum(n)}" in " ".join(again.output.split())

    async def rows(db):
        async with db.session() as s:
            return list((await s.execute(select(ActionScore))).scalars())

    scores = run_db(url, rows)
    assert len(scores) == n[0] + sum(n) and {a.source for a in scores} == {"rescore"}
    by_ck = {(a.game_id, a.turn, a.checkpoint): a for a in scores}
    key = f"adapter:{lora.resolve()}"
    gid = games[0]["game_id"]
    # the same adapter under its checkpoint id and its path gives the same number
    assert by_ck[(gid, 2, ck)].prob_deployed == pytest.approx(
        by_ck[(gid, 2, key)].prob_deployed, rel=1e-5
    )

    # one stored number checked against a plain forward pass over prompt + action
    from app.db.gamelog import load_state

    async def state_of(db):
        async with db.session() as s:
            return await load_state(s, gid)

    state = run_db(url, state_of)
    policy = load_policy(tiny, adapters={"x": lora}, dtype="float32", device="cpu")
    images = TangramImages(kilogram_dir).images(list(state.config.listener_order))
    req = DecodeRequest.for_game(prompt_game(state, 2), images, adapter="x")
    row = by_ck[(gid, 2, key)]
    logps, _ = _full_forward_logps(policy, req, row.action)
    assert row.num_tokens == len(logps)
    assert row.prob_deployed == pytest.approx(math.exp(sum(logps) / len(logps)), rel=1e-4)

    probs = run_db(url, lambda db: load_deployed_probs(db, checkpoint=key))
    assert len(probs) == sum(n) and all(0 < p < 1 for p in probs.values())
    assert probs[(gid, 2)] == row.prob_deployed
