"""Study integrity (issue 13), against real server processes and real databases: no pay or code
without play, targets nobody can predict, one visit per racing join, invisible messages refused,
model turns that survive a server restart, no ghost partners, bounded request bodies, logout
that ends the admin session, and personal data kept out of released files and logs.
SECURITY.md lists which test guards which item."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, text, update

from app.bot import BotClient, create_game, join
from app.db.database import Database
from app.db.models import Game, GameEvent, ListenerRequest, Participant
from app.game.configs import ConfigQueue
from app.game.rules import (
    GameCreated,
    GameRules,
    ListenerKind,
    Rejection,
    GameConfig,
    Join,
    SendUtterance,
    Seat,
    Tick,
    new_game,
    step,
)
from app.settings import Settings
from app.tangrams.store import resolve_tangram_set
from app.web.server import ROOT, tangram_pool
from tests.conftest import ADMIN_TOKEN, ServerProcess
from tests.test_faults import game_config
from tests.test_security import Socket, started_game

PROLIFIC_CODE = "CC-INTEGRITY-7731"
SECRET = "integrity-tests-secret-key-0123456789"
PII_MESSAGE = (
    "mail jane.doe@example.com or call +1 (555) 123-4567, see https://evil.example.org/x "
    "my id 5f8d0d55b54764421b7156c3"
)
PII_ORIGINALS = ("jane.doe@example.com", "555) 123-4567", "evil.example.org", "5f8d0d55b54764421b7156c3")


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(request, tmp_path_factory, kilogram_dir) -> ServerProcess:
    """One default server per database for this module's tests that need no special settings
    (each makes its own game or worker, so they share it): two server starts instead of twelve."""
    tmp = tmp_path_factory.mktemp(f"integrity-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp / 'multiref.sqlite3'}"
    else:
        url = request.getfixturevalue("pg_databases").new()
    proc = ServerProcess(url, kilogram_dir, tmp).start()
    yield proc
    proc.stop()


async def _rows(url: str, query):
    db = Database(url)
    try:
        async with db.session() as s:
            return (await s.execute(query)).all()
    finally:
        await db.close()


async def _participant(url: str, pid_token_owner: str) -> Participant:
    db = Database(url)
    try:
        async with db.session() as s:
            return await s.get(Participant, pid_token_owner)
    finally:
        await db.close()


async def _api_participant(base_url: str, token: str) -> dict:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as c:
        r = await c.get("/api/participant", headers={"Authorization": f"Bearer {token}"})
        r.raise_for_status()
        return r.json()


# ---------------------------------------------------------------- 1 and 4a: the completion link


async def test_prolific_link_is_never_in_a_page_and_only_a_finisher_gets_it(start_server, sqlite_url, kilogram_dir):
    server = start_server(sqlite_url, MULTIREF_PROLIFIC_COMPLETION_CODE=PROLIFIC_CODE, MULTIREF_SECRET_KEY=SECRET)
    async with httpx.AsyncClient(base_url=server.url) as c:
        for path in ("/", "/?PROLIFIC_PID=abc&STUDY_ID=s&SESSION_ID=1", "/static/app.js", "/static/game.js"):
            r = await c.get(path)
            assert r.status_code == 200 and PROLIFIC_CODE not in r.text, path
    created, speaker, listener, view = await started_game(server.url, kilogram_dir, seed=3)
    assert view.get("redirect_url") is None
    # in play, nothing anywhere carries the code
    for token in (created["speaker_token"], created["listener_token"]):
        assert (await _api_participant(server.url, token))["redirect_url"] is None
    # the speaker walks away at once: the listener, who stayed, is paid and gets the link
    await speaker.send({"type": "leave"})
    lv = await listener.view(lambda v: v["phase"] == "ended" and v.get("completion_code"))
    assert PROLIFIC_CODE in lv["redirect_url"]
    sv = await speaker.view(lambda v: v["phase"] == "ended")
    assert sv["forfeited"] is True and sv["completion_code"] is None and sv["redirect_url"] is None
    assert PROLIFIC_CODE not in json.dumps(speaker.frames)
    got = await _api_participant(server.url, created["listener_token"])
    assert got["completion_code"] and PROLIFIC_CODE in got["redirect_url"]
    for s in (speaker, listener):
        await s.close()


async def test_a_leaver_gets_no_code_and_no_pay(server, kilogram_dir):
    created, speaker, listener, _ = await started_game(server.url, kilogram_dir, seed=5)
    await speaker.send({"type": "leave"})
    await listener.view(lambda v: v["phase"] == "ended" and v.get("completion_code"))
    leaver = await _api_participant(server.url, created["speaker_token"])
    stayer = await _api_participant(server.url, created["listener_token"])
    assert leaver["status"] == "forfeited" and leaver["completion_code"] is None
    assert leaver["pay"]["total_cents"] == 0
    assert stayer["status"] == "completed" and stayer["completion_code"]
    # a reconnect shows the ended game, still without a code
    again = await Socket.open(server.url, created["speaker_token"])
    v = await again.view(lambda v: v["phase"] == "ended")
    assert v["completion_code"] is None and v["forfeited"] is True
    for s in (speaker, listener, again):
        await s.close()


# ---------------------------------------------------------------- 4b: lobby releases count


async def test_lobby_releases_count_toward_the_per_worker_cap(start_server, sqlite_url):
    server = start_server(
        sqlite_url, MULTIREF_LOBBY_TIMEOUT_SECONDS="1", MULTIREF_MAX_GAMES_PER_WORKER="2",
        MULTIREF_REQUIRE_QUIZ="false",
    )
    params = {"PROLIFIC_PID": "release-farmer", "STUDY_ID": "s", "SESSION_ID": "1"}
    codes = []
    for _ in range(2):
        bot = await BotClient(server.url, await join(server.url, params)).connect()
        await bot.wait_for(lambda b: b.released, 20)
        codes.append(bot.released.completion_code)
        await bot.close()
    assert all(codes) and len(set(codes)) == 2
    async with httpx.AsyncClient(base_url=server.url) as c:
        r = await c.post("/api/join", json={"params": params})
    assert r.status_code == 403 and r.json()["code"] == "game_limit"


# ---------------------------------------------------------------- 2: unpredictable targets


async def test_configs_are_keyed_by_the_secret_and_replayable_by_the_operator(start_server, sqlite_url, kilogram_dir, tmp_path):
    server = start_server(sqlite_url, MULTIREF_SECRET_KEY=SECRET, MULTIREF_REQUIRE_QUIZ="false")
    bots = [await BotClient(server.url, await join(server.url)).connect() for _ in range(2)]
    views = [await b.wait_for(lambda b: b.view, 30) for b in bots]
    speaker_view = next(v for v in views if v.seat == "speaker")
    context = tuple(sorted(t.tangram_id for t in speaker_view.tiles))
    targets = tuple(sorted(t.tangram_id for t in speaker_view.tiles if t.target))
    (index,), = await _rows(server.database_url, select(Game.config_index).where(Game.id == speaker_view.game_id))
    assert index == 0
    settings = Settings(tangrams=kilogram_dir)
    pool = tangram_pool(resolve_tangram_set(kilogram_dir, tmp_path), settings)
    public = ConfigQueue(pool, settings.config_seed, settings.rules).config(0)
    assert public.context != context  # a listener replaying the public queue learns nothing
    from app.game.configs import keyed_seed

    operator = ConfigQueue(pool, keyed_seed(SECRET, settings.config_seed), settings.rules).config(0)
    assert (operator.context, operator.targets) == (context, targets)  # the operator can replay
    for b in bots:
        await b.close()


def test_a_production_server_refuses_default_secrets(tmp_path, kilogram_dir, sqlite_url):
    from tests.conftest import ServerProcess

    cases = {
        "MULTIREF_SECRET_KEY": {"MULTIREF_PRODUCTION": "true", "MULTIREF_SECRET_KEY": "change-me", "MULTIREF_CONFIG_SEED": "study-7"},
        "MULTIREF_CONFIG_SEED": {"MULTIREF_PRODUCTION": "true", "MULTIREF_SECRET_KEY": SECRET},
    }
    for name, env in cases.items():
        proc = ServerProcess(sqlite_url, kilogram_dir, tmp_path, **env)
        with pytest.raises(RuntimeError) as failed:
            proc.start(timeout=60)
        proc.stop()
        lines = [x for x in str(failed.value).splitlines() if "Refusing to start" in x]
        assert len(lines) == 1 and name in lines[0], str(failed.value)[-800:]
    assert Settings(host="0.0.0.0").is_production() and not Settings().is_production()


# ---------------------------------------------------------------- 3: the per-worker limit races


async def test_racing_joins_of_one_worker_make_one_visit(start_server, database_url):
    server = start_server(database_url, MULTIREF_MAX_GAMES_PER_WORKER="3")
    params = {"PROLIFIC_PID": "racer-1", "STUDY_ID": "s", "SESSION_ID": "1"}
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        replies = await asyncio.gather(*(c.post("/api/join", json={"params": params}) for _ in range(12)))
    assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
    assert len({r.json()["participant_id"] for r in replies}) == 1
    (count,), = await _rows(server.database_url, select(func.count()).select_from(Participant))
    assert count == 1


async def test_the_attempt_constraint_holds_in_the_database(database_url, tmp_path):
    db = Database(database_url)
    await db.migrate(auto=True)
    try:
        from sqlalchemy.exc import IntegrityError

        async with db.session() as s, s.begin():
            for pid in ("a", "b"):
                s.add(Participant(id=pid, platform="prolific", worker_hash="h", status="released", created_at=0.0, attempt=1 if pid == "a" else 2))
        with pytest.raises(IntegrityError):
            async with db.session() as s, s.begin():
                s.add(Participant(id="c", platform="prolific", worker_hash="h", status="arrived", created_at=0.0, attempt=2))
    finally:
        await db.close()


# ---------------------------------------------------------------- 5: invisible messages


INVISIBLE = ["\u200b\u200c\u200d\u2060\ufeff", "\u200b \u200b", "\u3164", "\u2800\u2800", " \u00a0\u202f "]


def test_text_with_nothing_visible_is_empty_in_the_rules():
    rules = GameRules()
    ids = [f"t{i}" for i in range(10)]
    config = GameConfig(context=tuple(ids), targets=tuple(ids[:3]), speaker_order=tuple(ids), listener_order=tuple(ids))
    state = new_game(GameCreated(game_id="g", config=config, rules=rules, listener_kind=ListenerKind.HUMAN, at=0.0))
    state, _ = step(state, Join(seat=Seat.SPEAKER, at=0.0))
    state, _ = step(state, Join(seat=Seat.LISTENER, at=0.0))
    for text_ in INVISIBLE:
        _, result = step(state, SendUtterance(seat=Seat.SPEAKER, text=text_, at=1.0))
        assert isinstance(result, Rejection) and result.code == "empty_utterance", repr(text_)
    # an invisible draft is not auto-sent when the typing window closes: an idle warning instead
    _, events = step(state, Tick(at=1000.0, speaker_draft="\u200b\u200d"))
    assert [e.type for e in events][:1] == ["idle_warning"] or events[0].type == "game_ended"
    # visible text keeps its invisible characters verbatim
    _, events = step(state, SendUtterance(seat=Seat.SPEAKER, text="the bird\u200d", at=1.0))
    assert events[0].text == "the bird\u200d"


async def test_an_invisible_message_does_not_use_the_turn(server, kilogram_dir):
    created, speaker, listener, view = await started_game(server.url, kilogram_dir, seed=9)
    await speaker.send({"type": "send_utterance", "version": view["version"], "text": INVISIBLE[0]})
    err = await speaker.error("empty_utterance")
    assert err["version"] == view["version"]
    await speaker.send({"type": "send_utterance", "version": view["version"], "text": "the swan"})
    v = await listener.view(lambda v: v["phase"] == "selecting")
    assert [m["text"] for m in v["messages"]] == ["the swan"]
    for s in (speaker, listener):
        await s.close()


# ---------------------------------------------------------------- 7: ghost partners


async def test_a_killed_servers_waiting_worker_is_no_partner(start_server, database_url):
    env = {"MULTIREF_REQUIRE_QUIZ": "false", "MULTIREF_LOBBY_TIMEOUT_SECONDS": "60"}
    server = start_server(database_url, **env)
    ghost_token = await join(server.url, {"PROLIFIC_PID": "ghost", "STUDY_ID": "s", "SESSION_ID": "1"})
    ghost = await BotClient(server.url, ghost_token).connect()
    await ghost.wait_for(lambda b: b.lobby, 20)
    ghost_id = ghost.welcome.participant_id
    server.kill()
    if database_url.startswith("postgresql"):
        await asyncio.sleep(6)  # another replica could hold the socket: presence must lapse
    server.start()
    newcomer = await BotClient(server.url, await join(server.url)).connect()
    await newcomer.wait_for(lambda b: b.lobby or b.view, 20)
    await asyncio.sleep(3)
    assert newcomer.view is None, "paired with a worker whose server was killed"
    (games,), = await _rows(server.database_url, select(func.count()).select_from(Game))
    assert games == 0
    (status, code), = await _rows(
        server.database_url, select(Participant.status, Participant.completion_code).where(Participant.id == ghost_id)
    )
    assert status == "consented" and code is None  # out of the queue: no partner, no release code
    # the ghost coming back (a new socket) waits again, with the newcomer: they are paired
    back = await BotClient(server.url, ghost_token).connect()
    await back.wait_for(lambda b: b.view, 20)
    await newcomer.wait_for(lambda b: b.view, 20)
    for b in (newcomer, back):
        await b.close()


# ---------------------------------------------------------------- 6: restarts during a model turn


async def test_a_server_killed_while_applying_a_model_turn_does_not_end_the_game(start_server, database_url):
    env = {"MULTIREF_LISTENER": "model", "MULTIREF_CLICK_DELAY_SECONDS": "3", "MULTIREF_REQUIRE_QUIZ": "false"}
    server = start_server(database_url, **env)
    bot = await BotClient(server.url, await join(server.url), reconnect=True).connect()
    view = await bot.wait_for(lambda b: b.view and b.view.phase == "speaking" and b.view, 30)
    game_id = view.game_id
    await bot.say("the two birds")
    db = Database(server.database_url)
    try:
        deadline = time.monotonic() + 20
        while True:
            async with db.session() as s:
                req = (await s.execute(select(ListenerRequest).where(ListenerRequest.game_id == game_id))).scalar()
            if req is not None:
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        # play the policy worker: the decided action, stored
        async with db.session() as s, s.begin():
            await s.execute(
                update(ListenerRequest).where(ListenerRequest.id == req.id)
                .values(status="done", action="select A B", prob_action=0.5, done_at=time.time())
            )
        while True:
            async with db.session() as s:
                status = (await s.execute(select(ListenerRequest.status).where(ListenerRequest.id == req.id))).scalar()
            if status == "applying":
                break
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.05)
        server.kill()  # mid-apply: the first click waits out its delay
        server.start()
        deadline = time.monotonic() + 40
        while True:
            async with db.session() as s:
                g = await s.get(Game, game_id)
                status = (await s.execute(select(ListenerRequest.status).where(ListenerRequest.id == req.id))).scalar()
            if g.turn >= 2 or g.status != "live":
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
        assert g.end_reason != "model_unavailable" and g.turn >= 2, (g.status, g.end_reason, g.turn)
        assert status == "applied"
    finally:
        await db.close()
        await bot.close()


# ---------------------------------------------------------------- 8: request bodies


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _raw_post(port: int, head: str, chunks, timeout: float = 20) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head.encode())
        try:
            for chunk in chunks:
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        try:
            while part := s.recv(65536):
                data += part
        except (ConnectionResetError, TimeoutError):
            pass
        return data


async def test_oversized_bodies_are_refused_without_being_held(server):
    port = int(server.url.rsplit(":", 1)[1])
    before = _rss_kb(server.pid)
    # a declared size over the cap: refused before the body is read
    head = f"POST /api/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {200 * 2**20}\r\n\r\n"
    reply = await asyncio.to_thread(_raw_post, port, head, [b"{" + b" " * 65535])
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    # a streamed (chunked) body: refused as soon as it passes the cap
    head = "POST /api/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    block = b" " * 65536
    chunks = (f"{len(block):x}\r\n".encode() + block + b"\r\n" for _ in range(800))  # 50 MB
    reply = await asyncio.to_thread(_raw_post, port, head, chunks)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert _rss_kb(server.pid) - before < 40_000  # not the 50 MB sent
    async with httpx.AsyncClient(base_url=server.url) as c:  # a normal join still works
        assert (await c.post("/api/join", json={"params": {}})).status_code == 200


# ---------------------------------------------------------------- 9: logout ends the session


def _csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


async def test_logout_ends_the_admin_session_for_the_old_cookie(server):
    async with httpx.AsyncClient(base_url=server.url) as c:
        page = await c.get("/admin/login")
        r = await c.post("/admin/login", data={"token": ADMIN_TOKEN, "csrf": _csrf(page.text)})
        assert r.status_code == 303
        cookie = c.cookies.get("mr_admin")
        assert (await c.get("/admin/api/overview")).status_code == 200
        csrf = _csrf((await c.get("/admin")).text)
        r = await c.post("/admin/logout", data={"csrf": csrf}, headers={"Origin": server.url})
        assert r.status_code == 303
    async with httpx.AsyncClient(base_url=server.url, cookies={"mr_admin": cookie}) as stolen:
        r = await stolen.get("/admin")
        assert r.status_code == 303 and r.headers["location"].endswith("/admin/login")
        r = await stolen.get("/admin/api/overview")
        assert r.status_code == 401


# ---------------------------------------------------------------- 10: hardening


async def test_player_page_cannot_be_framed_and_one_token_cannot_hoard_sockets(server):
    async with httpx.AsyncClient(base_url=server.url) as c:
        r = await c.get("/")
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    token = await join(server.url)
    socks = []
    for _ in range(8):
        s = await Socket.open(server.url, token)
        await s.until(lambda f: f.get("type") == "welcome")
        socks.append(s)
    extra = await Socket.open(server.url, token)
    await extra.error("too_many_connections")
    await socks.pop().close()
    await asyncio.sleep(0.3)
    again = await Socket.open(server.url, token)
    await again.until(lambda f: f.get("type") == "welcome")
    for s in (*socks, extra, again):
        await s.close()


# ---------------------------------------------------------------- 11: personal data


async def test_release_export_scrubs_personal_data_and_the_database_keeps_it(start_server, sqlite_url, kilogram_dir, tmp_path):
    server = start_server(sqlite_url)
    created, speaker, listener, view = await started_game(server.url, kilogram_dir, seed=11)
    await speaker.send({"type": "send_utterance", "version": view["version"], "text": PII_MESSAGE})
    lv = await listener.view(lambda v: v["phase"] == "selecting")
    await listener.send({"type": "click", "version": lv["version"], "tangram_id": lv["tiles"][0]["tangram_id"]})
    lv = await listener.view(lambda v: v["version"] > lv["version"])
    await listener.send({"type": "submit", "version": lv["version"]})
    await speaker.view(lambda v: v["turn"] == 2 or v["phase"] == "ended")
    await speaker.send({"type": "leave"})
    await listener.view(lambda v: v["phase"] == "ended")
    for s in (speaker, listener):
        await s.close()
    out = tmp_path / "release"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "app.cli", "export", "--out", str(out), "--release", "--database-url", sqlite_url],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "1 EMAIL" in " ".join(run.stdout.split())  # the counts are reported
    for kind in ("interaction", "turn", "events"):
        body = (out / f"{kind}.jsonl").read_text()
        for original in PII_ORIGINALS:
            assert original not in body, (kind, original)
        assert "[EMAIL]" in body and "[PHONE]" in body and "[URL]" in body and "[ID]" in body, kind
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["release"] is True
    assert manifest["scrubbed"] == {"EMAIL": 1, "URL": 1, "ID": 1, "PHONE": 1, "HANDLE": 0}
    rows = await _rows(sqlite_url, select(GameEvent.data).where(GameEvent.type == "utterance_sent"))
    assert PII_MESSAGE in json.dumps([r[0] for r in rows])  # the database keeps the original


async def test_unsent_draft_is_cleared_when_the_game_ends(server, kilogram_dir):
    created, speaker, listener, view = await started_game(server.url, kilogram_dir, seed=13)
    await speaker.send({"type": "draft", "text": "call me on 0612345678"})
    await speaker.settle()
    (draft,), = await _rows(server.database_url, select(Game.speaker_draft).where(Game.id == created["game_id"]))
    assert draft == "call me on 0612345678"
    await listener.send({"type": "leave"})
    await speaker.view(lambda v: v["phase"] == "ended")
    (draft,), = await _rows(server.database_url, select(Game.speaker_draft).where(Game.id == created["game_id"]))
    assert draft == ""
    for s in (speaker, listener):
        await s.close()


async def test_access_logs_keep_no_worker_ids_or_client_addresses(start_server, sqlite_url):
    server = start_server(sqlite_url, args=("--log-level", "info"))
    async with httpx.AsyncClient(base_url=server.url) as c:
        await c.get("/?PROLIFIC_PID=pid-in-log-123&STUDY_ID=s")
    import websockets

    ws = await websockets.connect(server.url.replace("http", "ws") + "/ws?PROLIFIC_PID=ws-pid-in-log-456")
    await ws.close()
    await asyncio.sleep(0.5)
    log = server.log_path.read_text()
    assert '"GET / HTTP/1.1" 200' in log and "WebSocket /ws" in log  # the lines are there …
    assert "pid-in-log-123" not in log and "ws-pid-in-log-456" not in log  # … without ids
    access = [line for line in log.splitlines() if "HTTP/1.1" in line or "WebSocket" in line]
    assert access and not any("127.0.0.1" in line for line in access)
