"""End to end through a real server process, real websockets and a real database (both SQLite
and PostgreSQL): lobby pairing, full games, bad input, stale actions, reconnection."""

from __future__ import annotations

import asyncio
import json

import httpx
import websockets
from sqlalchemy import select

from app.bot import (
    BotClient,
    create_game,
    join,
    play_listener,
    play_pair,
    play_speaker,
    ws_url,
)
from app.db.database import Database
from app.db.models import Participant
from app.game.rules import GameConfig
from app.quiz import answer_key
from tests.conftest import ADMIN_TOKEN
from tests.dbcheck import check_database, fetch_game_rows


def _config(kilogram_dir, n_targets: int = 3) -> GameConfig:
    ids = sorted(p.stem for p in kilogram_dir.glob("*.svg"))[:10]
    return GameConfig(
        context=tuple(ids),
        targets=tuple(ids[:n_targets]),
        speaker_order=tuple(ids),
        listener_order=tuple(reversed(ids)),
    )


async def test_healthz_reports_database_and_version(server):
    r = httpx.get(server.url + "/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["version"] == "0.1.0"
    assert body["database"].split(":")[0] in ("sqlite", "postgresql")
    assert body["revision"]


async def test_lobby_pairs_two_workers_and_they_play_to_success(server):
    tokens = [await join(server.url, {"PROLIFIC_PID": f"worker-{i}", "STUDY_ID": "s", "SESSION_ID": str(i)}) for i in range(2)]
    bots = [await BotClient(server.url, t).connect() for t in tokens]
    views = [await b.wait_for(lambda b: b.view, 20) for b in bots]
    assert {v.seat for v in views} == {"speaker", "listener"}
    assert views[0].game_id == views[1].game_id
    speaker = next(b for b, v in zip(bots, views) if v.seat == "speaker")
    listener = next(b for b, v in zip(bots, views) if v.seat == "listener")
    # the speaker sees targets, the listener does not; orders are the seats' own
    assert any(t.target for t in speaker.view.tiles)
    assert all(t.target is None for t in listener.view.tiles)
    sv, lv = await asyncio.gather(play_speaker(speaker), play_listener(listener))
    assert sv.outcome == "successful" and lv.outcome == "successful"
    done = await speaker.wait_for(lambda b: b.view.completion_code and b.view)
    assert done.pay.total_cents > 0 and done.pay.success_cents > 0
    for b in bots:
        await b.close()
    assert await check_database(server.database_url) == []


async def test_the_same_worker_arriving_twice_is_one_participant_never_two_seats(server):
    """(That the lobby never pairs two sessions of one worker is checked in tests/test_oracles.py.)"""
    t1 = await join(server.url, {"PROLIFIC_PID": "same", "STUDY_ID": "s", "SESSION_ID": "1"})
    # the same worker arriving again resumes the same participant instead of a second seat
    t2 = await join(server.url, {"PROLIFIC_PID": "same", "STUDY_ID": "s", "SESSION_ID": "2"})
    b1 = await BotClient(server.url, t1).connect()
    b2 = await BotClient(server.url, t2).connect()
    await b1.wait_for(lambda b: b.lobby, 10)
    await b2.wait_for(lambda b: b.lobby, 10)
    await asyncio.sleep(1.0)
    assert b1.view is None and b2.view is None
    assert b1.welcome.participant_id == b2.welcome.participant_id
    for b in (b1, b2):
        await b.close()


async def test_the_quiz_is_checked_by_the_server_and_gates_the_lobby(server):
    token = await join(server.url, {"PROLIFIC_PID": "quiz-taker", "STUDY_ID": "s", "SESSION_ID": "1"}, consent=False)
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=server.url) as c:
        r = await c.post("/api/quiz", headers=auth, json={"answers": answer_key()})
        assert r.status_code == 409 and r.json()["code"] == "consent_required"
        assert (await c.post("/api/consent", headers=auth)).status_code == 200
        # skipping the quiz page: the lobby refuses
        bot = await BotClient(server.url, token).connect()
        err = await bot.wait_for(lambda b: b.errors and b.errors[-1], 10)
        assert err.code == "quiz_required" and bot.lobby is None
        await bot.close()
        wrong = [(a + 1) % 2 for a in answer_key()[:2]] + answer_key()[2:3]  # two wrong, one missing
        r = await c.post("/api/quiz", headers=auth, json={"answers": wrong})
        assert r.status_code == 200 and r.json() == {"passed": False, "wrong": [0, 1, 3], "attempts": 1}
        r = await c.post("/api/quiz", headers=auth, json={"answers": "not a list"})
        assert r.status_code == 422
        r = await c.post("/api/quiz", headers=auth, json={"answers": answer_key()})
        assert r.json() == {"passed": True, "wrong": [], "attempts": 2}
        r = await c.post("/api/quiz", json={"answers": answer_key()})  # no token
        assert r.status_code == 401
    bot = await BotClient(server.url, token).connect()
    await bot.wait_for(lambda b: b.lobby, 10)
    await bot.close()
    db = Database(server.database_url)
    try:
        async with db.session() as s:
            p = (await s.execute(select(Participant).where(Participant.status.in_(("waiting", "consented"))))).scalar_one()
        assert p.quiz_attempts == 2 and p.quiz_passed_at is not None and p.quiz_passed_at >= p.consented_at
    finally:
        await db.close()


async def test_scripted_game_to_failure_records_every_turn(server, kilogram_dir):
    config = _config(kilogram_dir)
    created = await create_game(server.url, ADMIN_TOKEN, config)
    result = await play_pair(server.url, created["speaker_token"], created["listener_token"], mistakes=10)
    assert result.outcome == "unsuccessful" and result.end_reason == "max_turns"
    assert result.turns == 10
    assert all(result.completion_codes)
    game, turns = await fetch_game_rows(server.database_url, created["game_id"])
    assert game["outcome"] == "unsuccessful" and len(turns) == 10
    assert all(t["utterance"] and t["selection_after"] == [] for t in turns)
    assert await check_database(server.database_url) == []


async def test_bad_input_gets_error_frames_and_changes_nothing(server, kilogram_dir):
    config = _config(kilogram_dir)
    created = await create_game(server.url, ADMIN_TOKEN, config)
    speaker = await BotClient(server.url, created["speaker_token"]).connect()
    listener = await BotClient(server.url, created["listener_token"]).connect()
    await speaker.wait_for(lambda b: b.view and b.view.phase == "speaking")
    await listener.wait_for(lambda b: b.view and b.view.phase == "speaking")
    version = speaker.view.version

    async def expect_error(bot: BotClient, raw: str, code: str) -> None:
        n = len(bot.errors)
        await bot.send_raw(raw)
        err = await bot.wait_for(lambda b: len(b.errors) > n and b.errors[-1], 10)
        assert err.code == code, err

    await expect_error(speaker, "{not json", "malformed")
    await expect_error(speaker, json.dumps({"type": "teleport"}), "unknown_type")
    await expect_error(speaker, json.dumps({"type": "click"}), "invalid_frame")
    await expect_error(speaker, "x" * 9000, "frame_too_large")
    await expect_error(
        speaker, json.dumps({"type": "send_utterance", "version": version, "text": "a" * 501}), "utterance_too_long"
    )
    # acting for the other seat: the speaker's token can only act as the speaker
    await expect_error(speaker, json.dumps({"type": "click", "version": version, "tangram_id": config.context[0]}), "not_your_seat")
    # acting out of turn: the listener cannot submit before the speaker speaks
    await expect_error(listener, json.dumps({"type": "submit", "version": version}), "not_your_turn")
    # a stale version is rejected
    await expect_error(speaker, json.dumps({"type": "send_utterance", "version": version - 1, "text": "hi"}), "stale_version")
    assert speaker.view.version == version  # nothing changed
    await speaker.say("select " + " ".join(config.targets))
    await listener.wait_for(lambda b: b.view.phase == "selecting")
    await expect_error(listener, json.dumps({"type": "click", "version": listener.view.version, "tangram_id": "nope"}), "unknown_tangram")
    # a double click: the same action twice against the same version is applied once
    v = listener.view.version
    frame = json.dumps({"type": "click", "version": v, "tangram_id": config.targets[0]})
    await listener.send_raw(frame)
    await listener.send_raw(frame)
    err = await listener.wait_for(lambda b: b.errors and b.errors[-1].code == "stale_version" and b.errors[-1], 10)
    assert err.version == v + 1
    await listener.wait_for(lambda b: b.view.version == v + 1)
    assert [t.tangram_id for t in listener.view.tiles if t.selected] == [config.targets[0]]
    await listener.select_exactly(set(config.targets))
    await speaker.wait_for(lambda b: b.view.phase == "ended")
    # anything after the end is refused
    await expect_error(speaker, json.dumps({"type": "send_utterance", "version": speaker.view.version, "text": "more"}), "game_ended")
    await speaker.close()
    await listener.close()
    assert await check_database(server.database_url) == []


async def test_bad_token_and_missing_hello_are_refused(server):
    async with websockets.connect(ws_url(server.url)) as ws:
        await ws.send(json.dumps({"type": "hello", "token": "forged.token"}))
        frames = [json.loads(await ws.recv()) for _ in range(1)]
        assert frames[0]["type"] == "error" and frames[0]["code"] == "bad_token"
    async with websockets.connect(ws_url(server.url)) as ws:
        await ws.send(json.dumps({"type": "ping", "nonce": "x"}))
        frame = json.loads(await ws.recv())
        assert frame["code"] == "hello_required"


async def test_reload_within_grace_resumes_the_same_seat(server, kilogram_dir):
    config = _config(kilogram_dir)
    created = await create_game(server.url, ADMIN_TOKEN, config)
    speaker = await BotClient(server.url, created["speaker_token"]).connect()
    listener = await BotClient(server.url, created["listener_token"]).connect()
    await speaker.wait_for(lambda b: b.view and b.view.phase == "speaking")
    await speaker.say("select " + config.targets[0])
    await listener.wait_for(lambda b: b.view and b.view.phase == "selecting")
    await listener.click(config.targets[0])
    await listener.close()  # a reload: the socket goes away …
    await speaker.wait_for(lambda b: not b.view.partner_connected)
    listener = await BotClient(server.url, created["listener_token"]).connect()  # … and comes back
    view = await listener.wait_for(lambda b: b.view)
    assert view.seat == "listener" and view.phase == "selecting" and view.turn == 1
    assert [t.tangram_id for t in view.tiles if t.selected] == [config.targets[0]]
    assert [m.text for m in view.messages] == ["select " + config.targets[0]]
    await speaker.wait_for(lambda b: b.view.partner_connected)
    await listener.select_exactly(set(config.targets))
    ended = await speaker.wait_for(lambda b: b.view.phase == "ended" and b.view)
    assert ended.outcome == "successful"
    await speaker.close()
    await listener.close()


async def test_partner_gone_past_grace_ends_game_with_codes(start_server, sqlite_url, kilogram_dir):
    server = start_server(sqlite_url, MULTIREF_RULES__DISCONNECT_GRACE_SECONDS="1.5")
    created = await create_game(server.url, ADMIN_TOKEN, _config(kilogram_dir))
    speaker = await BotClient(server.url, created["speaker_token"]).connect()
    listener = await BotClient(server.url, created["listener_token"]).connect()
    await speaker.wait_for(lambda b: b.view and b.view.phase == "speaking")
    await listener.close()
    ended = await speaker.wait_for(lambda b: b.view.phase == "ended" and b.view.completion_code and b.view, 15)
    assert ended.end_reason == "listener_disconnected" and ended.outcome == "aborted"
    assert ended.pay is not None
    await speaker.close()


async def _game_with_a_draft(server, kilogram_dir):
    """A game whose speaker has typed a message and not sent it."""
    config = _config(kilogram_dir)
    created = await create_game(server.url, ADMIN_TOKEN, config)
    speaker = await BotClient(server.url, created["speaker_token"]).connect()
    listener = await BotClient(server.url, created["listener_token"]).connect()
    await speaker.wait_for(lambda b: b.view and b.view.phase == "speaking")
    await speaker.send_raw(json.dumps({"type": "draft", "text": "the bird on the left"}))
    return config, created, speaker, listener


async def test_typing_window_auto_sends_draft_then_listener_auto_submits(start_server, sqlite_url, kilogram_dir):
    """The server's own sweeper, in real time: it fires both windows. Each boundary, and actions
    that arrive after one, are checked with a fake clock in tests/test_deadlines.py; the windows
    here are wide enough for a loaded machine (the click has 6.5 s)."""
    server = start_server(
        sqlite_url,
        MULTIREF_RULES__SPEAKER_SECONDS="1.5",
        MULTIREF_RULES__TURN_SECONDS="8",
    )
    config, created, speaker, listener = await _game_with_a_draft(server, kilogram_dir)
    view = await listener.wait_for(lambda b: b.view.phase == "selecting" and b.view, 10)
    assert view.messages[-1].text == "the bird on the left" and view.messages[-1].auto
    await listener.click(config.context[5])
    view = await speaker.wait_for(lambda b: b.view.turn == 2 and b.view, 20)
    assert view.last_submitted == [config.context[5]]
    game, turns = await fetch_game_rows(server.database_url, created["game_id"])
    assert turns[0]["auto_sent"] and turns[0]["auto_submitted"]
    await speaker.close()
    await listener.close()
