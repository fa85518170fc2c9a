"""Servers killed mid-game, several server processes on one PostgreSQL, lobby timeouts, and the
replay of real recorded games through the running server."""

from __future__ import annotations

import asyncio

import pytest

from app.bot import BotClient, create_game, join, play_listener, play_speaker, recorded_config, replay_game
from tests.conftest import ADMIN_TOKEN
from tests.dbcheck import check_database, fetch_game_rows
from tests.test_server_play import _config


async def _connect_pair(url_speaker: str, url_listener: str, created: dict) -> tuple[BotClient, BotClient]:
    speaker = await BotClient(url_speaker, created["speaker_token"]).connect()
    listener = await BotClient(url_listener, created["listener_token"]).connect()
    await speaker.wait_for(lambda b: b.view is not None)
    await listener.wait_for(lambda b: b.view is not None)
    return speaker, listener


async def test_server_killed_mid_game_recovers_from_the_database(start_server, database_url, kilogram_dir):
    server = start_server(database_url)
    config = _config(kilogram_dir, n_targets=4)
    created = await create_game(server.url, ADMIN_TOKEN, config)
    speaker, listener = await _connect_pair(server.url, server.url, created)
    await speaker.wait_for(lambda b: b.view.phase == "speaking")
    await speaker.say("select " + config.targets[0])
    await listener.wait_for(lambda b: b.view.phase == "selecting")
    await listener.click(config.targets[0])
    await listener.click(config.context[-1])  # a wrong pick, selected but not yet submitted
    before = listener.view

    server.kill()  # kill -9: no shutdown code runs
    await speaker.close()
    await listener.close()
    server.start()

    speaker, listener = await _connect_pair(server.url, server.url, created)
    view = listener.view
    assert view.turn == before.turn and view.phase == "selecting"
    assert [t.tangram_id for t in view.tiles if t.selected] == [t.tangram_id for t in before.tiles if t.selected]
    assert [m.text for m in view.messages] == [m.text for m in before.messages]
    sv, lv = await asyncio.gather(play_speaker(speaker), play_listener(listener))
    assert sv.outcome == "successful" and sv.end_reason == "success"
    await speaker.close()
    await listener.close()
    game, turns = await fetch_game_rows(server.database_url, created["game_id"])
    assert game["outcome"] == "successful" and turns[0]["selection_after"] == sorted([config.targets[0], config.context[-1]])
    assert await check_database(server.database_url) == []


async def test_two_server_processes_serve_one_game(start_server, pg_url, kilogram_dir):
    """The speaker is connected to one process and the listener to another (LISTEN/NOTIFY)."""
    a = start_server(pg_url)
    b = start_server(pg_url)
    config = _config(kilogram_dir, n_targets=5)
    created = await create_game(a.url, ADMIN_TOKEN, config)
    speaker, listener = await _connect_pair(a.url, b.url, created)
    seen_clicks: list[int] = []
    speaker.on_state = lambda view, _t: seen_clicks.append(view.version) if view.cause == "selection_toggled" else None
    sv, lv = await asyncio.gather(play_speaker(speaker), play_listener(listener, mistakes=1))
    assert sv.outcome == lv.outcome == "successful"
    assert sv.version == lv.version and sv.turn == 4  # a wasted turn, then 2 + 2 + 1 targets
    assert len(seen_clicks) == 5  # every click of the listener streamed live across processes
    assert sv.completion_code and lv.completion_code and sv.completion_code != lv.completion_code
    await speaker.close()
    await listener.close()
    assert await check_database(pg_url) == []


async def test_two_processes_pair_lobby_arrivals_once(start_server, pg_url):
    a = start_server(pg_url)
    b = start_server(pg_url)
    tokens = [await join((a, b)[i % 2].url, {"PROLIFIC_PID": f"w{i}", "STUDY_ID": "s", "SESSION_ID": str(i)}) for i in range(6)]
    bots = [await BotClient((a, b)[i % 2].url, t).connect() for i, t in enumerate(tokens)]
    views = [await bot.wait_for(lambda x: x.view, 20) for bot in bots]
    games: dict[str, list[str]] = {}
    for v in views:
        games.setdefault(v.game_id, []).append(v.seat)
    assert len(games) == 3 and all(sorted(seats) == ["listener", "speaker"] for seats in games.values())
    for bot in bots:
        await bot.close()


async def test_lobby_timeout_releases_with_a_code(start_server, sqlite_url):
    server = start_server(sqlite_url, MULTIREF_LOBBY_TIMEOUT_SECONDS="1")
    bot = await BotClient(server.url, await join(server.url, {"workerId": "w1", "assignmentId": "a1", "hitId": "h1"})).connect()
    await bot.wait_for(lambda b: b.lobby, 10)
    released = await bot.wait_for(lambda b: b.released, 10)
    assert released.reason == "lobby_timeout" and released.completion_code.startswith("MR-")
    await bot.close()
    # coming back with the same token shows the same code
    again = await BotClient(server.url, bot.token).connect()
    assert (await again.wait_for(lambda b: b.released, 10)).completion_code == released.completion_code
    await again.close()


async def test_game_limit_and_preview_are_refused(start_server, sqlite_url):
    from app.bot import BotError

    server = start_server(sqlite_url, MULTIREF_MAX_GAMES_PER_WORKER="1", MULTIREF_LISTENER="model")
    token = await join(server.url, {"PROLIFIC_PID": "p1", "STUDY_ID": "s", "SESSION_ID": "1"})
    bot = await BotClient(server.url, token).connect()
    view = await bot.wait_for(lambda b: b.view, 10)
    assert view.listener_kind == "model"
    await bot.leave()
    await bot.wait_for(lambda b: b.view.phase == "ended")
    await bot.close()
    with pytest.raises(BotError, match="game_limit"):
        await join(server.url, {"PROLIFIC_PID": "p1", "STUDY_ID": "s", "SESSION_ID": "2"})
    with pytest.raises(BotError, match="preview"):
        await join(server.url, {"assignmentId": "ASSIGNMENT_ID_NOT_AVAILABLE", "hitId": "h"})


async def test_replay_of_ten_real_games_reproduces_each_original(start_server, pg_url, recorded_games):
    server = start_server(pg_url)
    for game in recorded_games[:10]:
        result = await replay_game(server.url, ADMIN_TOKEN, game)
        stored, turns = await fetch_game_rows(pg_url, result.game_id)
        assert stored["outcome"] == game["outcome"], game["game_id"]
        assert len(turns) == game["num_turns"] == result.turns
        assert [t["selection_after"] for t in turns] == [sorted(s) for s in game["selection_after_turn"]]
        assert [t["utterance"] for t in turns] == [" ".join(u.split()) for u in game["utterances"]]
        assert stored["config"]["targets"] == list(recorded_config(game).targets)
    assert await check_database(pg_url) == []
