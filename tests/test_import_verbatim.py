"""Import keeps the data: import -> export of the released format gives back every text field
byte for byte (runs of whitespace, Unicode, markup-looking text), on made-up tricky records and on
the recorded real games. Live input is normalised; that rule is the live server's only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.db.checker import check_games
from app.db.database import Database
from app.export import export
from app.game.rules import GameRules, Seat, SendUtterance, step
from app.importing import import_files, parse_record, synthesise
from bench.export_bench import generate_games

TRICKY = [
    "get the  shape",                                   # two spaces
    "  leading and trailing  ",
    "tabs\tand\nnewlines\r\nand CRLF",
    "non\u00a0breaking\u2003em space\u200bzero width",
    "caf\u00e9 vs cafe\u0301, \u05e9\u05dc\u05d5\u05dd, \u0645\u0631\u062d\u0628\u0627, \U0001f986 \U0001f468\u200d\U0001f469\u200d\U0001f467",
    "<b>bold</b> &amp; <script>alert('x')</script> <img src=x onerror=alert(1)>",
    "quotes \"double\" 'single' \u201ccurly\u201d \\ backslash {braces} [brackets] %s %(name)s",
    "<image> A and <end_of_utterance> look like model tokens",
    "x" * 20 + "   " + "y" * 20,
]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _text_fields(row: dict, keys: list[str]) -> dict:
    return {k: row.get(k) for k in keys}


async def _fresh(url: str) -> Database:
    db = Database(url)
    await db.migrate()
    return db


async def test_import_then_export_keeps_tricky_text_byte_for_byte(tmp_path):
    source = await _fresh(f"sqlite+aiosqlite:///{tmp_path / 'a.sqlite3'}")
    await generate_games(source, 12, seed=5, abandon_rate=0.0)
    first = await export(source, tmp_path / "a", "jsonl")
    await source.close()
    records = _jsonl(first.files["interaction"])
    k = 0
    for record in records:  # every utterance becomes one of the tricky texts
        chat = []
        for _ in record["chat"]:
            chat.append(TRICKY[k % len(TRICKY)])
            k += 1
        record["chat"] = chat
    records[0]["policy_name"] = "B-SUP  \u00fc <i>v2</i>"  # other text fields are kept too
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")

    target = await _fresh(f"sqlite+aiosqlite:///{tmp_path / 'b.sqlite3'}")
    report = await import_files(target, [edited], actor="test")
    assert report.imported == len(records) and not report.bad, report.bad[:3]
    assert (await check_games(target)).mismatches == []  # the event log replays to the same text
    second = await export(target, tmp_path / "b", "jsonl")
    await target.close()

    back = {r["game_id"]: r for r in _jsonl(second.files["interaction"])}
    used = set()
    for record in records:
        out = back[record["game_id"]]
        for key in ("chat", "policy_name", "game_id", "split", "checkpoint"):
            assert out[key] == record[key], (record["game_id"], key, out[key], record[key])
            assert json.dumps(out[key], ensure_ascii=False).encode() == json.dumps(record[key], ensure_ascii=False).encode()
        used.update(out["chat"])
    assert used == set(TRICKY)
    # the turn level: each turn's chats and the next utterance (chat_feedback) are the source's
    for row in _jsonl(second.files["turn"]):
        chat = back[row["game_id"]]["chat"]
        assert row["chats"] == chat[: row["turn"]]
        assert row["chat_feedback"] == (chat[row["turn"]] if row["turn"] < len(chat) else None)


def test_live_input_is_normalised_but_an_imported_utterance_is_not():
    record = {
        "game_id": "verbatim-1",
        "speaker_order": list("ABCDEFGHIJ"),
        "listener_order": list("JIHGFEDCBA"),
        "targets": ["A", "B", "C"],
        "utterances": ["pick  the\tthree <b>left</b> ones "],
        "selection_after_turn": [["A", "B", "C"]],
        "outcome": "successful",
        "policy": "human",
        "created_at": 1_700_000_000.0,
    }
    created, events, state = synthesise(parse_record(record))
    assert [m.text for m in state.messages] == ["pick  the\tthree <b>left</b> ones "]
    # the same text typed by a live speaker is normalised (documented in docs/game.md)
    from app.game.rules import Join, new_game

    live = new_game(created)
    live, _ = step(live, Join(seat=Seat.SPEAKER, at=1.0))
    live, _ = step(live, Join(seat=Seat.LISTENER, at=1.0))
    _, result = step(live, SendUtterance(seat=Seat.SPEAKER, text=record["utterances"][0], at=2.0))
    assert [e.text for e in result] == ["pick the three <b>left</b> ones"]
    # verbatim text still may not be empty
    _, refused = step(live, SendUtterance(seat=Seat.SPEAKER, text=" \t ", at=2.0, verbatim=True))
    assert getattr(refused, "code", None) == "empty_utterance"
    assert GameRules().max_utterance_chars == 500


async def test_the_recorded_real_games_come_back_byte_for_byte(tmp_path):
    sample = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "respect_games"
    files = sorted(sample.glob("*.jsonl")) if sample.is_dir() else []
    if not files:
        pytest.skip("needs the recorded real games (../shared/reference/respect_games)")
    games = [json.loads(line) for f in files for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    db = await _fresh(f"sqlite+aiosqlite:///{tmp_path / 'real.sqlite3'}")
    report = await import_files(db, files, round_=0, actor="test")
    assert report.imported == len(games) and not report.bad, report.bad[:3]
    out = await export(db, tmp_path / "x", "jsonl")
    await db.close()
    rows = {r["game_id"]: r for r in _jsonl(out.files["interaction"])}
    changed = [g["game_id"] for g in games if rows[g["game_id"][:64]]["chat"] != g["utterances"]]
    assert not changed, f"{len(changed)} of {len(games)} games changed on import: {changed[:5]}"
    assert any("  " in u for g in games for u in g["utterances"])  # the sample has such runs
