"""A model listener in live games: real server, real database, a real policy worker process
running a tiny random-weight Idefics2 built offline. Bot speakers play against it."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from app.bot import BotClient, join, play_speaker
from app.db.database import Database
from app.db.models import ListenerRequest, WorkerHeartbeat
from app.deploy import deploy_checkpoint
from app.db.gamelog import load_state
from app.processes import WorkerProcess
from policy_worker.prompt import apply_action, is_legal_action, letter_map

pytestmark = pytest.mark.model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from policy_worker.tiny import build_tiny_idefics2

    return build_tiny_idefics2(tmp_path_factory.mktemp("tiny-idefics2"), seed=0)


@pytest.fixture(scope="session")
def tiny_adapters(tiny_model, tmp_path_factory) -> tuple[Path, Path]:
    from policy_worker.tiny import make_tiny_lora

    root = tmp_path_factory.mktemp("adapters")
    return make_tiny_lora(tiny_model, root / "a", seed=1), make_tiny_lora(tiny_model, root / "b", seed=2)


@pytest.fixture
def start_worker(tmp_path, kilogram_dir):
    started: list[WorkerProcess] = []

    def start(database_url: str, base: Path, lease: float = 20.0, *extra: str) -> WorkerProcess:
        w = WorkerProcess(
            database_url, base, tmp_path / f"worker-{len(started)}.log", tangrams=kilogram_dir,
            args=("--lease", str(lease), *extra),
        )
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


MODEL_ENV = {
    "MULTIREF_LISTENER": "model",
    "MULTIREF_RULES__MAX_TURNS": "3",
    "MULTIREF_RULES__MODEL_TURN_SECONDS": "60",
    "MULTIREF_CLICK_DELAY_SECONDS": "0.05",
}


async def _requests(url: str, game_id: str) -> list[ListenerRequest]:
    """The game's listener requests once no server is still applying one: the applier marks a
    request applied just after the game's last event commits, so the speaker can see the end
    a moment before (waits at most 10 s)."""
    db = Database(url)
    try:
        for _ in range(100):
            async with db.session() as s:
                rows = await s.execute(
                    select(ListenerRequest).where(ListenerRequest.game_id == game_id).order_by(ListenerRequest.turn)
                )
                requests = list(rows.scalars())
            if all(r.status != "applying" for r in requests):
                break
            await asyncio.sleep(0.1)
        return requests
    finally:
        await db.close()


async def _speaker_game(url: str, pid: str) -> tuple[BotClient, list[str]]:
    bot = await BotClient(url, await join(url, {"PROLIFIC_PID": pid, "STUDY_ID": "s", "SESSION_ID": pid})).connect()
    causes: list[str] = []
    bot.on_state = lambda view, _t: causes.append(view.cause or "")
    view = await bot.wait_for(lambda b: b.view, 20)
    assert view.seat == "speaker" and view.listener_kind == "model"
    return bot, causes


async def test_bot_speakers_play_full_games_against_the_model_listener(start_server, start_worker, database_url, tiny_model):
    server = start_server(database_url, **MODEL_ENV)
    start_worker(database_url, tiny_model)
    bots = [await _speaker_game(server.url, f"spk{i}") for i in range(2)]
    views = await asyncio.gather(*(play_speaker(b, timeout=120) for b, _ in bots))
    for (bot, causes), view in zip(bots, views):
        assert view.phase == "ended" and view.end_reason in ("success", "max_turns"), view.end_reason
        requests = await _requests(database_url, view.game_id)
        assert [r.turn for r in requests] == list(range(1, view.turn + 1))
        state = await _state(database_url, view.game_id)
        letters = letter_map(state.config.listener_order)
        for r, record in zip(requests, state.turns):
            before = [letters[t] for t in record.selection_before]
            assert is_legal_action(r.action, before), (r.action, before)
            assert apply_action(before, r.action) == sorted(letters[t] for t in record.selection_after)
            assert r.status == "applied"
            assert 0 < r.prob_action <= 1 and 0 < r.prob_unconstrained <= r.prob_action + 1e-9
            assert r.latency_s > 0 and r.model_input and "Assistant:" in r.model_input
            assert r.worker_id and r.attempts == 1
            assert r.action != "nothing"  # the worker decodes in paper mode by default (§8)
        scores = await _scores(database_url, view.game_id)
        assert [(a.turn, a.action, a.source) for a in scores] == [
            (r.turn, r.action, "serve") for r in requests
        ]
        for a, r in zip(scores, requests):
            # π_deployed: the geometric mean of the action's full-vocabulary token probabilities
            assert a.checkpoint == (r.checkpoint or "base") and a.num_tokens >= 3
            assert r.prob_unconstrained <= a.prob_deployed <= 1
            assert a.logp_sum == pytest.approx(math.log(a.prob_deployed) * a.num_tokens)
        clicks = causes.count("selection_toggled")
        assert clicks == sum(len(_action_letters(r.action)) for r in requests)  # streamed one by one
        await bot.close()


async def _scores(url: str, game_id: str) -> list:
    from app.db.models import ActionScore

    db = Database(url)
    try:
        async with db.session() as s:
            rows = await s.execute(
                select(ActionScore).where(ActionScore.game_id == game_id).order_by(ActionScore.turn)
            )
            return list(rows.scalars())
    finally:
        await db.close()


def _action_letters(action: str) -> list[str]:
    return [w for w in action.split() if len(w) == 1]


async def _state(url: str, game_id: str):
    db = Database(url)
    try:
        async with db.session() as s:
            return await load_state(s, game_id)
    finally:
        await db.close()


async def test_past_the_turn_deadline_the_game_ends_model_unavailable(start_server, sqlite_url):
    server = start_server(sqlite_url, **{**MODEL_ENV, "MULTIREF_RULES__MODEL_TURN_SECONDS": "1.5"})
    bot, _ = await _speaker_game(server.url, "alone")  # no worker runs
    await bot.wait_for(lambda b: b.view.phase == "speaking")
    await bot.say("the bird")
    view = await bot.wait_for(lambda b: b.view.phase == "ended" and b.view.completion_code and b.view, 15)
    assert view.end_reason == "model_unavailable" and view.outcome == "aborted"
    assert view.pay is not None and view.pay.total_cents >= 0
    await bot.close()


async def test_a_turn_claimed_by_a_dead_worker_is_taken_over_after_its_lease(start_server, start_worker, pg_url, tiny_model, kilogram_dir):
    from policy_worker.serve import PolicyWorker, WorkerOptions

    server = start_server(pg_url, **MODEL_ENV)
    bot, _ = await _speaker_game(server.url, "dies")
    await bot.wait_for(lambda b: b.view.phase == "speaking")
    await bot.say("the bird")
    db = Database(pg_url)
    doomed = PolicyWorker(db, WorkerOptions(systems=["model"], base=str(tiny_model), tangrams=kilogram_dir,
                                            lease_seconds=2.0, worker_id="doomed"), policy=object())
    claimed = []
    for _ in range(50):
        claimed = await doomed.claim(1)
        if claimed:
            break
        await asyncio.sleep(0.1)
    assert claimed and claimed[0].turn == 1  # claimed, then this "worker" dies without answering
    start_worker(pg_url, tiny_model)
    view = await bot.wait_for(lambda b: (b.view.turn == 2 or b.view.phase == "ended") and b.view, 90)
    [request] = [r for r in await _requests(pg_url, view.game_id) if r.turn == 1]
    assert request.attempts == 2 and request.worker_id != "doomed" and request.status == "applied"
    await db.close()
    await bot.close()


async def test_two_workers_split_one_systems_queue_without_double_serving(start_server, start_worker, pg_url, tiny_model):
    """Many GPUs: one worker per GPU (`--device cuda:K`) on the same systems. Here two CPU worker
    processes claim turns of the same system from one queue; each turn is decoded once."""
    server = start_server(pg_url, **MODEL_ENV)
    workers = [start_worker(pg_url, tiny_model, 20.0, "--batch-size", "1") for _ in range(2)]
    db = Database(pg_url)
    try:
        for _ in range(600):  # both loaded and beating before any turn is asked for
            async with db.session() as s:
                beating = (await s.execute(select(WorkerHeartbeat.worker_id))).scalars().all()
            if len(beating) >= 2:
                break
            assert all(w.proc.poll() is None for w in workers)
            await asyncio.sleep(0.2)
        assert len(beating) >= 2
    finally:
        await db.close()
    bots = [await _speaker_game(server.url, f"split{i}") for i in range(4)]
    views = await asyncio.gather(*(play_speaker(b, timeout=180) for b, _ in bots))
    served: dict[str, int] = {}
    for (bot, causes), view in zip(bots, views):
        assert view.phase == "ended" and view.end_reason in ("success", "max_turns"), view.end_reason
        requests = await _requests(pg_url, view.game_id)
        assert [r.turn for r in requests] == list(range(1, view.turn + 1))  # one row per turn
        for r in requests:
            assert r.status == "applied" and r.attempts == 1, (r.worker_id, r.attempts)
            served[r.worker_id] = served.get(r.worker_id, 0) + 1
        # the clicks the speaker saw are exactly the served actions' (no second answer applied)
        assert causes.count("selection_toggled") == sum(len(_action_letters(r.action)) for r in requests)
        await bot.close()
    assert len(served) == 2 and all(n > 0 for n in served.values()), served  # the queue was split


async def test_hot_swap_keeps_running_games_on_their_checkpoint(start_server, start_worker, pg_url, tiny_model, tiny_adapters):
    a, b = tiny_adapters
    db = Database(pg_url)
    await db.migrate()
    async with db.session() as s, s.begin():
        ck_a = (await deploy_checkpoint(s, "model", 1, str(tiny_model), str(a))).id
    server = start_server(pg_url, **MODEL_ENV)
    start_worker(pg_url, tiny_model)
    first, _ = await _speaker_game(server.url, "early")
    await first.wait_for(lambda b: b.view.phase == "speaking")
    await first.say("select the bird")
    await first.wait_for(lambda b: b.view.turn == 2 or b.view.phase == "ended", 90)
    async with db.session() as s, s.begin():  # deploy round 2 while the first game is live
        ck_b = (await deploy_checkpoint(s, "model", 2, str(tiny_model), str(b))).id
    second, _ = await _speaker_game(server.url, "late")
    v1, v2 = await asyncio.gather(play_speaker(first, timeout=120), play_speaker(second, timeout=120))
    assert {r.checkpoint for r in await _requests(pg_url, v1.game_id)} == {ck_a}
    assert {r.checkpoint for r in await _requests(pg_url, v2.game_id)} == {ck_b}
    for _ in range(50):  # the heartbeat is written every 2 s: wait for one after the swap
        async with db.session() as s:
            beats = list((await s.execute(select(WorkerHeartbeat))).scalars())
        if len(beats) == 1 and set(beats[0].checkpoints["loaded"]) == {ck_a, ck_b}:
            break
        await asyncio.sleep(0.2)
    assert len(beats) == 1 and set(beats[0].checkpoints["loaded"]) == {ck_a, ck_b}  # no restart
    assert time.time() - beats[0].beat_at < 10
    await db.close()
    await first.close()
    await second.close()


async def test_serve_with_worker_runs_the_model_listener_in_process(start_server, sqlite_url, tiny_model):
    """Zero setup: one command serves games against a model listener on one machine."""
    server = start_server(
        sqlite_url, args=("--with-worker", "--base", str(tiny_model), "--device", "cpu"), **MODEL_ENV
    )
    bot, causes = await _speaker_game(server.url, "solo")
    view = await play_speaker(bot, timeout=120)
    assert view.end_reason in ("success", "max_turns")
    assert all(r.status == "applied" for r in await _requests(sqlite_url, view.game_id))
    await bot.close()


def test_worker_decodes_in_paper_mode_unless_told_otherwise(tmp_path):
    """--decoding: paper by default (MULTIREF.md §8), grammar as the option, anything else a
    one-line error before a model is loaded; the mode reaches every decode request."""
    from typer.testing import CliRunner

    from app.cli import app
    from policy_worker.decoding import DecodeRequest
    from policy_worker.serve import WorkerOptions

    assert WorkerOptions(systems=["m"], base="b", tangrams=tmp_path).decoding == "paper"
    bad = CliRunner().invoke(app, ["worker", "--decoding", "beam", "--base", str(tmp_path)])
    assert bad.exit_code == 2 and "paper or grammar" in bad.output
    with pytest.raises(ValueError, match="paper or grammar"):
        DecodeRequest(chat=[], images=[], selected=[], decoding="beam")
