"""Export in the ReSpect release format and import of published games: round trips, a
consistent snapshot while games are live, pandas and datasets, bad records, the real sample."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.db.checker import check_games
from app.db.database import Database
from app.db.gamelog import append, load_state
from app.db.models import AuditEntry, Game, GameEvent
from app.export import ExportFilter, export, iter_games, parse_date
from app.game.rules import AdminEnd, step
from app.importing import import_files
from bench.export_bench import generate_games
from tests.conftest import ROOT

# the fields of the public release (interaction level) that an import must give back
RELEASE_FIELDS = ["game_id", "turn", "end", "targets", "context", "clicks", "chat", "policy_name", "round", "date"]
ROUND_TRIP_FIELDS = RELEASE_FIELDS + [
    "outcome", "end_reason", "speaker_order", "listener_order", "listener_kind",
    "sec_until_send", "sec_until_submit", "split", "checkpoint", "incomplete",
]
TURN_FIELDS = [
    "game_turn_id", "game_id", "turn", "chats", "context", "targets", "currently_selected", "selected",
    "deselected", "clicks", "chat_feedback", "end", "policy_name", "round", "date", "sec_until_send",
    "sec_until_submit",
]


async def _db(url: str) -> Database:
    db = Database(url)
    await db.migrate()
    return db


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text().splitlines()]


def _by_id(rows: list[dict], key: str = "game_id") -> dict:
    return {r[key]: r for r in rows}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
async def test_export_then_import_gives_back_the_same_records(database_url, sqlite_url, tmp_path, fmt):
    source = await _db(database_url)
    await generate_games(source, 60, seed=3, live=4, abandon_rate=0.2)
    first = await export(source, tmp_path / "a", fmt)
    assert first.games == 60 and first.rows["turn"] > 60  # the 4 live games are left out
    target = await _db(sqlite_url if "postgres" in database_url else f"sqlite+aiosqlite:///{tmp_path / 'b.sqlite3'}")
    report = await import_files(target, [first.files["interaction"]], actor="test")
    assert report.imported == 60 and not report.bad, report.bad
    check = await check_games(target)
    assert check.games == 60 and check.mismatches == []
    second = await export(target, tmp_path / "b", fmt)
    a, b = _by_id(_rows(first.files["interaction"])), _by_id(_rows(second.files["interaction"]))
    assert a.keys() == b.keys()
    for gid in a:
        for field in ROUND_TRIP_FIELDS:
            assert a[gid][field] == b[gid][field], (gid, field, a[gid][field], b[gid][field])
        assert b[gid]["source"] == "imported"
    ta, tb = _by_id(_rows(first.files["turn"]), "game_turn_id"), _by_id(_rows(second.files["turn"]), "game_turn_id")
    assert ta.keys() == tb.keys()
    for key in ta:
        for field in TURN_FIELDS:
            assert ta[key][field] == tb[key][field], (key, field)
    # outcomes of all kinds made the trip
    assert {"successful", "aborted"} <= {r["outcome"] for r in a.values()}
    assert any(r["turn"] == 0 for r in a.values())  # abandoned before the first message
    # a second import of the same file changes nothing
    again = await import_files(target, [first.files["interaction"]], actor="test")
    assert again.imported == 0 and again.existing == 60
    await source.close()
    await target.close()


async def test_rows_follow_the_release_and_open_in_pandas_and_datasets(sqlite_url, tmp_path):
    import datasets
    import pandas as pd

    db = await _db(sqlite_url)
    await generate_games(db, 30, seed=5)
    for fmt in ("jsonl", "parquet"):
        report = await export(db, tmp_path / fmt, fmt)
        files = report.files
        if fmt == "jsonl":
            inter = pd.read_json(files["interaction"], lines=True)
            turns = pd.read_json(files["turn"], lines=True)
            events = pd.read_json(files["events"], lines=True)
        else:
            inter, turns, events = (pd.read_parquet(files[k]) for k in ("interaction", "turn", "events"))
        assert len(inter) == 30 and len(turns) == report.rows["turn"] and len(events) == report.rows["events"]
        for column in RELEASE_FIELDS + ["outcome", "speaker_order", "listener_order"]:
            assert column in inter.columns, column
        for column in TURN_FIELDS + ["prob_action", "action"]:
            assert column in turns.columns, column
        loader = "json" if fmt == "jsonl" else "parquet"
        ds = {
            k: datasets.load_dataset(loader, data_files={"train": str(files[k])}, split="train",
                                     cache_dir=str(tmp_path / "hf-cache"))
            for k in ("interaction", "turn", "events")
        }
        assert ds["interaction"].num_rows == 30 and ds["turn"].num_rows == report.rows["turn"]
        row = ds["turn"][0]
        assert row["game_turn_id"] == f"{row['game_id']}_{row['turn']}"
        assert ds["interaction"].features["clicks"].feature.feature.dtype == "string"
    # the semantics of the fields, checked on the turn rows of one game
    rows = _rows(tmp_path / "jsonl" / "turn.jsonl")
    inter = _by_id(_rows(tmp_path / "jsonl" / "interaction.jsonl"))
    model_turns = [r for r in rows if r["listener_kind"] == "model"]
    human_turns = [r for r in rows if r["listener_kind"] == "human"]
    assert model_turns and all(0 < r["prob_action"] < 1 and r["action"] for r in model_turns)
    assert human_turns and all(r["prob_action"] is None for r in human_turns)
    for gid, game in inter.items():
        turns = sorted((r for r in rows if r["game_id"] == gid), key=lambda r: r["turn"])
        assert [t["clicks"] for t in turns] == game["clicks"]
        before: list[str] = []
        for i, t in enumerate(turns):
            assert t["currently_selected"] == before
            assert set(t["clicks"]) == (set(before) - set(t["deselected"])) | set(t["selected"])
            assert t["chats"] == game["chat"][: i + 1]
            assert t["chat_feedback"] == (game["chat"][i + 1] if i + 1 < len(game["chat"]) else None)
            assert t["end"] == game["end"] == (1 if game["outcome"] == "successful" else 0)
            before = t["clicks"]
        assert game["context"] == game["listener_order"] and game["turn"] == len(game["chat"])
    events = _rows(tmp_path / "jsonl" / "events.jsonl")
    assert json.loads(events[0]["data"])["type"] == events[0]["type"] == "game_created"
    await db.close()


async def test_export_reads_one_snapshot_while_games_go_on(database_url, tmp_path):
    db = await _db(database_url)
    await generate_games(db, 12, seed=9, live=3)
    async with db.session() as s:
        ended = {g for (g,) in await s.execute(select(Game.id).where(Game.status == "ended"))}
        live = {g for (g,) in await s.execute(select(Game.id).where(Game.status == "live"))}
    seen = []
    async for bundle in iter_games(db, ExportFilter(), page_size=2):
        if not seen:  # while the export runs: a live game ends, another game is played
            gid = sorted(live)[0]
            async with db.session() as s, s.begin():
                state = await load_state(s, gid)
                after, events = step(state, AdminEnd(at=state.created_at + 500, note="during export"))
                await append(s, state, events, after, "admin")
            await generate_games(db, 2, seed=10)
        seen.append(bundle.game["id"])
    assert set(seen) == ended and len(seen) == len(ended)  # the snapshot taken at the start
    report = await export(db, tmp_path / "all", "jsonl", ExportFilter(include_incomplete=True))
    rows = _by_id(_rows(report.files["interaction"]))
    assert report.games == len(ended) + 2 + 3
    assert sum(1 for r in rows.values() if r["incomplete"]) == 2
    assert all(r["outcome"] is None for r in rows.values() if r["incomplete"])
    # filters: round, system, since
    only = await export(db, tmp_path / "f", "jsonl", ExportFilter(systems=["CONTROL"], rounds=[1]))
    assert {r["policy_name"] for r in _rows(only.files["interaction"])} == {"CONTROL"}
    assert (await export(db, tmp_path / "none", "jsonl", ExportFilter(rounds=[7]))).games == 0
    first_date = min(r["date"] for r in rows.values())
    late = await export(db, tmp_path / "late", "jsonl", ExportFilter(since=parse_date(first_date) + 1))
    assert 0 < late.games < report.games
    await db.close()


async def test_the_recorded_sample_imports_and_exports_in_the_release_shape(sqlite_url, tmp_path, recorded_games, reference):
    db = await _db(sqlite_url)
    path = reference / "respect_games" / "sep_12_24_sample.jsonl"
    report = await import_files(db, [path], round_=0, actor="test")
    assert report.imported == 100 and not report.bad, report.bad[:3]
    assert (await check_games(db)).mismatches == []
    out = await export(db, tmp_path / "x", "parquet")
    rows = _by_id(_rows(out.files["interaction"]))
    for g in recorded_games:
        r = rows[g["game_id"]]
        png = lambda ids: [f"{t}.png" for t in ids]  # noqa: E731 - the release's tangram ids
        assert r["targets"] == png(sorted(g["targets"]))
        assert r["speaker_order"] == png(g["speaker_order"])
        assert r["context"] == png(g["listener_order"])
        assert r["chat"] == g["utterances"]  # verbatim
        assert r["clicks"] == [png(sorted(s)) for s in g["selection_after_turn"]]
        assert r["outcome"] == g["outcome"] and r["turn"] == g["num_turns"]
        assert r["policy_name"] == g["policy"] and r["round"] == 0 and r["date"] == g["created_at"]
        assert r["sec_until_send"] == [float(t["secUntilSend"]) for t in g["turn_timings"]]
        assert r["sec_until_submit"] == [round(t["secUntilSubmit"], 3) for t in g["turn_timings"]]
        assert r["listener_kind"] == "model" and r["source"] == "imported"
    async with db.session() as s:
        assert (await s.execute(select(func.count()).select_from(Game).where(Game.source == "imported"))).scalar_one() == 100
    await db.close()


async def test_bad_records_are_reported_with_file_and_line_and_never_half_written(sqlite_url, tmp_path, recorded_games, monkeypatch):
    db = await _db(sqlite_url)
    good = dict(recorded_games[0])
    unsuccessful = next(g for g in recorded_games if g["outcome"] == "unsuccessful")
    lines = [
        json.dumps(good),                                                        # 1 ok
        "{not json",                                                             # 2
        json.dumps({**recorded_games[1], "outcome": "unsuccessful"}),           # 3 the turns say successful
        json.dumps({**recorded_games[2], "selection_after_turn": [["page-Z"]] * len(recorded_games[2]["utterances"])}),  # 4
        json.dumps({"game_turn_id": "x_1", "game_id": "x"}),                    # 5 a turn row
        json.dumps({**recorded_games[3], "game_id": "../../etc/passwd"}),       # 6
        "",                                                                      # 7 blank: ignored
        json.dumps(good),                                                        # 8 already imported
        json.dumps({**unsuccessful, "utterances": unsuccessful["utterances"][:-1] + [""]}),  # 9 empty message
        json.dumps([1, 2]),                                                      # 10
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = await import_files(db, [path], actor="test")
    assert report.imported == 1 and report.existing == 1
    assert [i.line for i in report.bad] == [2, 3, 4, 5, 6, 9, 10], [str(i) for i in report.bad]
    assert all(str(i).startswith(f"{path}:{i.line}") for i in report.bad)
    assert "not JSON" in report.bad[0].message and "successful" in report.bad[1].message
    assert "page-Z" in report.bad[2].message and "turn-level" in report.bad[3].message
    # a failure while writing leaves nothing behind: one transaction per record
    import app.importing as importing

    async def failing_append(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(importing, "append", failing_append)
    report = await import_files(db, [_write(tmp_path, recorded_games[4])], actor="test")
    assert report.imported == 0 and "disk full" in report.bad[0].message
    async with db.session() as s:
        assert await s.get(Game, recorded_games[4]["game_id"]) is None
        assert (await s.execute(select(func.count()).select_from(GameEvent).where(GameEvent.game_id == recorded_games[4]["game_id"]))).scalar_one() == 0
        assert (await s.execute(select(func.count()).select_from(Game))).scalar_one() == 1
        actions = [a for (a,) in await s.execute(select(AuditEntry.action))]
    assert actions.count("import") == 2
    await db.close()


def _write(tmp_path: Path, record: dict) -> Path:
    path = tmp_path / "single.jsonl"
    path.write_text(json.dumps(record) + "\n")
    return path


def test_export_and_import_commands(tmp_path, reference):
    env = {**os.environ, "MULTIREF_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cli.sqlite3'}"}
    sample = reference / "respect_games" / "sep_12_24_sample.jsonl"

    def run(*args):
        return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    r = run("import", str(sample), "--round", "2")
    assert r.returncode == 0, r.stderr
    assert "100 games imported" in r.stdout
    r = run("export", "--round", "2", "--format", "parquet", "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "100 games exported" in r.stdout
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"interaction.parquet", "turn.parquet", "events.parquet", "manifest.json"}
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["games"] == 100 and manifest["filter"]["rounds"] == [2]
    r = run("export", "--format", "csv", "--out", str(tmp_path / "bad"))
    assert r.returncode != 0
    r = run("import", str(tmp_path / "out" / "turn.parquet"))
    assert r.returncode == 1 and "turn-level" in r.stderr
