"""The export's per-game rows, event rows, manifest and filters against values worked out by hand.

tests/test_oracles.py checks the turn rows of a scripted game; this checks the rest of what a
release consumer reads: every field of the ``interaction`` row, the ``events`` rows, the counts in
the manifest, which games each filter selects, and paging through more games than one page
holds. Written for the gaps `make mutate` found in app/export.py (a renamed key, a rounding to
the wrong digit, a filter that selected everything, a page that skipped games all passed).
In process, on a real SQLite file, with a fake clock.
"""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import update

from app.db.models import Game, ListenerRequest
from app.export import ExportFilter, export
from app.game.rules import Click, Join, Leave, SendUtterance, Seat, Submit
from tests.test_oracles import CONFIG, T0, TARGETS, World, play_scripted

PNG = lambda ids: [f"{t}.png" for t in ids]  # noqa: E731 - the release's file-name ids


def _read(folder, kind: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{kind}.jsonl").read_text().splitlines()]


async def test_the_interaction_row_and_events_of_a_scripted_game(sqlite_url, tmp_path):
    w = await World.make(sqlite_url)
    g = await play_scripted(w)
    report = await export(w.db, tmp_path / "out", "jsonl")
    (inter,) = _read(tmp_path / "out", "interaction")
    assert inter == {
        "game_id": g,
        "turn": 3,
        "end": 1,
        "outcome": "successful",
        "end_reason": "success",
        "targets": PNG(TARGETS),
        "context": PNG(CONFIG.listener_order),
        "speaker_order": PNG(CONFIG.context),
        "listener_order": PNG(CONFIG.listener_order),
        "clicks": [PNG(["tg-01", "tg-02"]), PNG(["tg-01", "tg-04"]), PNG(["tg-01", "tg-04", "tg-07"])],
        "chat": ["the two birds", "not the boat, add the house", "and the man sitting"],
        "policy_name": "human",
        "round": None,
        "date": "2025-06-15 15:06:40",
        "checkpoint": None,
        "listener_kind": "human",
        "source": "live",
        "split": None,
        "config_index": None,  # made for the test with a given config, not from the queue
        "duration_s": 60.0,
        "sec_until_send": [4.0, 8.0, 10.0],
        "sec_until_submit": [10.0, 18.0, 30.0],
        "incomplete": False,
    }
    events = _read(tmp_path / "out", "events")
    # created +0; both join at +2 (turn 1 starts); then the script's 11 commands; the end. The
    # hub is driven in process, so every event's actor is "server" (sockets pass the player's)
    expected = [
        ("game_created", 0, "server"), ("player_joined", 2, "server"), ("player_joined", 2, "server"),
        ("turn_started", 2, "server"),
        ("utterance_sent", 6, "server"), ("selection_toggled", 8, "server"),
        ("selection_toggled", 9, "server"), ("selection_submitted", 12, "server"),
        ("turn_started", 12, "server"),
        ("utterance_sent", 20, "server"), ("selection_toggled", 22, "server"),
        ("selection_toggled", 23, "server"), ("selection_submitted", 30, "server"),
        ("turn_started", 30, "server"),
        ("utterance_sent", 40, "server"), ("selection_toggled", 41, "server"),
        ("selection_submitted", 60, "server"), ("game_ended", 60, "server"),
    ]
    assert [(e["type"], e["at"] - T0, e["actor"]) for e in events] == expected
    assert [e["seq"] for e in events] == list(range(1, 19))
    assert {e["game_id"] for e in events} == {g}
    assert [json.loads(e["data"])["type"] for e in events] == [t for t, _, _ in expected]
    assert json.loads(events[4]["data"])["text"] == "the two birds"
    assert (report.games, report.rows) == (1, {"interaction": 1, "turn": 3, "events": 18})
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (manifest["games"], manifest["rows"], manifest["files"]) == (
        1, {"interaction": 1, "turn": 3, "events": 18},
        {"interaction": "interaction.jsonl", "turn": "turn.jsonl", "events": "events.jsonl"},
    )
    # one JSON object per line, compact, text kept as typed (no \\u escapes)
    line = (tmp_path / "out" / "interaction.jsonl").read_text().splitlines()[0]
    assert line.startswith('{"game_id":"') and ", " not in line.split('"chat"')[0]
    await w.db.close()


async def _short_game(w: World, name: str, start: float, system: str = "human") -> str:
    """Speaker and listener join at ``start``; a message at start+4.12345, one click, a submit at
    start+7.12345, and the listener leaves at start+10 in turn 2: an aborted game, one turn played."""
    await w.participant(f"{name}-s")
    await w.participant(f"{name}-l")
    w.clock.at(start)
    g = await w.lobby.create_game_for(f"{name}-s", f"{name}-l", config=CONFIG, system=system)
    await w.do(g, start, Join, Seat.SPEAKER)
    await w.do(g, start, Join, Seat.LISTENER)
    await w.do(g, start + 4.12345, SendUtterance, Seat.SPEAKER, text=f"{name} one")
    await w.do(g, start + 5, Click, Seat.LISTENER, tangram_id="tg-01")
    await w.do(g, start + 7.12345, Submit, Seat.LISTENER)
    await w.do(g, start + 10, Leave, Seat.LISTENER)
    return g


async def test_filters_paging_and_unfinished_games(sqlite_url, tmp_path):
    w = await World.make(sqlite_url)
    a = await _short_game(w, "a", 100)
    b = await _short_game(w, "b", 200, system="B-SUP")
    c = await _short_game(w, "c", 300)
    # d is still being played: joined at +400, nothing else
    await w.participant("d-s")
    await w.participant("d-l")
    w.clock.at(400)
    d = await w.lobby.create_game_for("d-s", "d-l", config=CONFIG)
    await w.do(d, 400, Join, Seat.SPEAKER)
    async with w.db.session() as s, s.begin():
        await s.execute(update(Game).where(Game.id == c).values(round=2, source="imported"))

    async def ids(flt: ExportFilter | None = None, page_size: int = 1) -> list[str]:
        out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
        await export(w.db, out, "jsonl", flt, page_size=page_size)
        return [r["game_id"] for r in _read(out, "interaction")]

    # oldest first, one game per page: nothing skipped, nothing repeated; d is not finished
    assert await ids() == [a, b, c]
    assert await ids(page_size=2) == [a, b, c]
    assert await ids(ExportFilter(include_incomplete=True)) == [a, b, c, d]
    assert await ids(ExportFilter(systems=["B-SUP"])) == [b]
    assert await ids(ExportFilter(rounds=[2])) == [c]
    assert await ids(ExportFilter(sources=["imported"])) == [c]
    assert await ids(ExportFilter(sources=["live"])) == [a, b]
    assert await ids(ExportFilter(since=T0 + 200)) == [b, c]          # created at or after
    assert await ids(ExportFilter(until=T0 + 300)) == [a, b]          # created before
    assert await ids(ExportFilter(since=T0 + 150, until=T0 + 250)) == [b]

    # rows without a system (an imported record that named no policy) are named for the listener
    async with w.db.session() as s, s.begin():
        await s.execute(update(Game).where(Game.id == a).values(system=None))
        await s.execute(update(Game).where(Game.id == c).values(system=None, listener_kind="model"))
    out = tmp_path / "all"
    await export(w.db, out, "jsonl", ExportFilter(include_incomplete=True))
    rows = {r["game_id"]: r for r in _read(out, "interaction")}
    # a: created +100, ended +110; the message at +104.12345 is 4.123 s into turn 1, the submit
    # 7.123 s (3 decimals); turn 2 started but nobody spoke in it: 1 turn
    assert {k: rows[a][k] for k in ("turn", "end", "outcome", "end_reason", "duration_s",
                                     "sec_until_send", "sec_until_submit", "clicks", "incomplete",
                                     "policy_name", "date")} == {
        "turn": 1, "end": 0, "outcome": "aborted", "end_reason": "listener_left",
        "duration_s": 10.0, "sec_until_send": [4.123], "sec_until_submit": [7.123],
        "clicks": [PNG(["tg-01"])], "incomplete": False, "policy_name": "human",
        "date": "2025-06-15 15:08:20",
    }
    assert (rows[b]["policy_name"], rows[c]["policy_name"]) == ("B-SUP", "model")
    assert (rows[c]["round"], rows[c]["source"]) == (2, "imported")
    assert {k: rows[d][k] for k in ("turn", "end", "outcome", "end_reason", "duration_s", "chat",
                                     "clicks", "incomplete")} == {
        "turn": 0, "end": 0, "outcome": None, "end_reason": None, "duration_s": None, "chat": [],
        "clicks": [], "incomplete": True,
    }
    turns = _read(out, "turn")
    assert [(r["game_id"], r["turn"], r["sec_until_send"], r["sec_until_submit"], r["incomplete"],
             r["policy_name"], r["outcome"], r["end"]) for r in turns] == [
        (a, 1, 4.123, 7.123, False, "human", "aborted", 0),
        (b, 1, 4.123, 7.123, False, "B-SUP", "aborted", 0),
        (c, 1, 4.123, 7.123, False, "model", "aborted", 0),
    ]
    await w.db.close()


async def test_model_turns_automatic_actions_and_text_in_the_turn_rows(sqlite_url, tmp_path, monkeypatch):
    w = await World.make(sqlite_url)
    g = await w.game()
    await w.join_both(g, 0)
    # turn 1: the draft is sent when the typing window closes (+30), the listener clicks and the
    # turn ends at +45 with an automatic submit; turn 2: the speaker leaves at +50.12345
    w.clock.at(10)
    await w.hub.update_draft(g, Seat.SPEAKER, "un café ☕ à gauche")
    w.clock.at(30)
    assert await w.sweeper.sweep() == 1
    await w.do(g, 35, Click, Seat.LISTENER, tangram_id="tg-04")
    w.clock.at(45)
    assert await w.sweeper.sweep() == 1
    await w.do(g, 50.12345, Leave, Seat.SPEAKER)
    # what a model listener's worker leaves behind for turn 1 (the export reads it from here)
    async with w.db.session() as s, s.begin():
        s.add(ListenerRequest(game_id=g, turn=1, system="B-SUP", checkpoint="B-SUP-r0-abc", status="applied",
                              created_at=T0 + 30, deadline=T0 + 60, action="select tg-04", prob_action=0.25))
        await s.execute(update(Game).where(Game.id == g).values(round=3, checkpoint="row-checkpoint"))
    # the dates are UTC whatever the machine's time zone
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        await export(w.db, tmp_path / "out", "jsonl")
    finally:
        monkeypatch.undo()
        time.tzset()
    (turn,) = _read(tmp_path / "out", "turn")
    assert {k: turn[k] for k in ("turn", "chats", "clicks", "action", "prob_action", "checkpoint", "round",
                                 "auto_sent", "auto_submitted", "sec_until_send", "sec_until_submit",
                                 "date", "chat_feedback")} == {
        "turn": 1, "chats": ["un café ☕ à gauche"], "clicks": PNG(["tg-04"]), "action": "select tg-04",
        "prob_action": 0.25, "checkpoint": "B-SUP-r0-abc", "round": 3, "auto_sent": True,
        "auto_submitted": True, "sec_until_send": 30.0, "sec_until_submit": 45.0,
        "date": "2025-06-15 15:06:40", "chat_feedback": None,
    }
    (inter,) = _read(tmp_path / "out", "interaction")
    assert (inter["duration_s"], inter["checkpoint"], inter["date"]) == (50.123, "row-checkpoint", "2025-06-15 15:06:40")
    # the text is written as typed, UTF-8, not as \\u escapes
    raw = (tmp_path / "out" / "turn.jsonl").read_bytes()
    assert "un café ☕ à gauche".encode() in raw
    await w.db.close()


async def test_progress_nested_folders_bad_formats_and_release_scrubbing(sqlite_url, tmp_path):
    w = await World.make(sqlite_url)
    g = await w.game()
    await w.join_both(g, 0)
    await w.do(g, 5, SendUtterance, Seat.SPEAKER, text="mail me at jane.doe@example.com")
    await w.do(g, 9, Leave, Seat.LISTENER)
    calls: list[tuple[int, int | None]] = []
    nested = tmp_path / "a" / "b"
    report = await export(w.db, nested, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 1), (1, 1)]  # the total first, then done at the end
    assert report.format == "jsonl" and report.out == nested and report.scrubbed is None
    assert sorted(p.name for p in nested.iterdir()) == ["events.jsonl", "interaction.jsonl", "manifest.json", "turn.jsonl"]
    # a plain export keeps the text as typed; a release export scrubs it (the database keeps it)
    assert _read(nested, "interaction")[0]["chat"] == ["mail me at jane.doe@example.com"]
    await export(w.db, nested, release=True)  # the same folder again: files replaced
    assert _read(nested, "interaction")[0]["chat"] == ["mail me at [EMAIL]"]
    assert json.loads((nested / "manifest.json").read_text())["release"] is True
    with pytest.raises(ValueError, match=r"^format must be one of \('jsonl', 'parquet'\)$"):
        await export(w.db, tmp_path / "x", "csv")
    await w.db.close()


async def test_paging_through_games_created_at_the_same_instant(sqlite_url, tmp_path):
    w = await World.make(sqlite_url)
    made = [await _short_game(w, name, 100) for name in ("p", "q", "r")]  # all created at +100
    out = tmp_path / "out"
    await export(w.db, out, "jsonl", page_size=1)
    # one game per page, ties broken by game id: each game once, none skipped
    assert [r["game_id"] for r in _read(out, "interaction")] == sorted(made)
    assert [r["game_id"] for r in _read(out, "turn")] == sorted(made)
    await w.db.close()
