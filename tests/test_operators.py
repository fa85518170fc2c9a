"""Operators and admins: systems, traffic shares, quotas, pauses, rounds, fair comparison,
deploys during live games, the admin and operator APIs, blocking, ending games, the audit log,
and authentication of every admin, operator and dashboard route."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from app.bot import BotClient, create_game, join, play_listener, play_speaker
from app.db.database import Database
from app.db.models import AuditEntry, BlockedWorker, Game, ListenerRequest, Participant, WorkerHeartbeat
from app.deploy import deploy_checkpoint, set_paused, set_quota, set_share, start_round
from app.game.configs import ConfigQueue
from app.game.rules import AdminEnd, GameConfig, GameRules
from app.live.bus import Bus
from app.live.lobby import Lobby, LobbyPolicy, assignment_draw
from app.live.participants import Status
from tests.conftest import ADMIN_TOKEN
from tests.dbcheck import check_database

POOL = [f"tangram-{i:03d}" for i in range(120)]
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FINGERPRINT = "token:" + hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()[:12]


# ---------------------------------------------------------------- in-process lobby


async def _lobby(url: str, policy: LobbyPolicy | None = None, seed="fixed-seed") -> tuple[Database, Lobby]:
    db = Database(url)
    await db.migrate()
    lobby = Lobby(db, Bus(), GameRules(), ConfigQueue(POOL, 7), policy or LobbyPolicy(), assign_seed=seed)
    return db, lobby


async def _arrive(db: Database, lobby: Lobby, n: int, prefix: str = "p") -> list[str]:
    ids = [f"{prefix}{i:04d}" for i in range(n)]
    for pid in ids:
        async with db.session() as s, s.begin():
            s.add(Participant(id=pid, platform="bot", worker_hash=hashlib.sha256(pid.encode()).hexdigest(),
                              status=Status.CONSENTED, created_at=time.time(), consented_at=time.time()))
        await lobby.enter(pid)
    return ids


async def _registry(db: Database, shares: dict[str, float], round_: int | None = 1) -> None:
    async with db.session() as s, s.begin():
        if round_ is not None:
            await start_round(s, round_, "test")
        for name, share in shares.items():
            if name != "human":
                await deploy_checkpoint(s, name, round_ or 0, "base-model", None, deployed_by="test")
            await set_share(s, name, share, "test")


async def _games(db: Database) -> list[Game]:
    async with db.session() as s:
        return list((await s.execute(select(Game).order_by(Game.created_at, Game.id))).scalars())


async def _participants(db: Database) -> dict[str, Participant]:
    async with db.session() as s:
        return {p.id: p for p in (await s.execute(select(Participant))).scalars()}


async def test_shares_are_respected_over_600_arrivals(sqlite_url):
    """600 arrivals, shares 0.5 / 0.3 / 0.2 (two model systems and human-human): the counts fit
    the shares (chi-square, 2 degrees of freedom, p = 0.001 critical value 13.82)."""
    db, lobby = await _lobby(sqlite_url)
    await _registry(db, {"B-SUP": 0.5, "CONTROL": 0.3, "human": 0.2})
    ids = await _arrive(db, lobby, 600)
    games = await _games(db)
    people = await _participants(db)
    assigned = Counter()
    for g in games:
        assigned[g.system] += 1 if g.system != "human" else 2
    assigned["human"] += sum(1 for p in people.values() if p.status == Status.WAITING)
    assert sum(assigned.values()) == 600 and set(assigned) == {"B-SUP", "CONTROL", "human"}
    expected = {"B-SUP": 300, "CONTROL": 180, "human": 120}
    chi2 = sum((assigned[k] - e) ** 2 / e for k, e in expected.items())
    assert chi2 < 13.82, (assigned, chi2)
    # the draw is the lobby's: each participant got the system its fixed draw falls on
    by_player = {}
    for g in games:
        by_player[g.speaker_id] = g.system
        if g.listener_id:
            by_player[g.listener_id] = g.system
    for pid in ids[:50]:
        u = assignment_draw("fixed-seed", pid)
        want = "B-SUP" if u < 0.5 else ("CONTROL" if u < 0.8 else "human")
        assert by_player.get(pid, "human") == want
    # model games are played by the arriving worker as speaker, with the active checkpoint
    for g in games:
        assert g.round == 1
        if g.system == "human":
            assert g.listener_kind == "human" and g.checkpoint is None
        else:
            assert g.listener_kind == "model" and g.checkpoint.startswith(f"{g.system}-r1-")
    await db.close()


async def test_systems_deployed_together_play_the_same_configs(sqlite_url):
    db, lobby = await _lobby(sqlite_url)
    await _registry(db, {"B-SUP": 1, "CONTROL": 1, "human": 1})
    await _arrive(db, lobby, 90)
    games = await _games(db)
    queue = ConfigQueue(POOL, 7)
    per_system: dict[str, list[Game]] = {}
    for g in games:
        per_system.setdefault(g.system, []).append(g)
    assert set(per_system) == {"B-SUP", "CONTROL", "human"}
    for system, rows in per_system.items():
        assert [g.config_index for g in rows] == list(range(len(rows))), system
        for g in rows:
            assert GameConfig.model_validate(g.config) == queue.config(g.config_index)
    n = min(len(v) for v in per_system.values())
    assert n >= 10
    for i in range(n):  # the i-th game of every system is the same game
        configs = {json.dumps(rows[i].config, sort_keys=True) for rows in per_system.values()}
        assert len(configs) == 1
    # a new round replays the queue from its start
    async with db.session() as s, s.begin():
        await start_round(s, 2, "test")
    await _arrive(db, lobby, 6, prefix="q")
    later = [g for g in await _games(db) if g.round == 2]
    assert later and {g.config_index for g in later if g.system == "B-SUP"} <= {0, 1, 2}
    assert all(GameConfig.model_validate(g.config) == queue.config(g.config_index) for g in later)
    await db.close()


async def test_quota_and_pause_stop_assignment_and_shares_redistribute(sqlite_url):
    db, lobby = await _lobby(sqlite_url)
    await _registry(db, {"B-SUP": 1, "CONTROL": 1})
    async with db.session() as s, s.begin():
        await set_quota(s, "B-SUP", 3, "test")
    await _arrive(db, lobby, 40)
    counts = Counter(g.system for g in await _games(db))
    assert counts["B-SUP"] == 3 and counts["CONTROL"] == 37
    # an aborted game does not use up the quota: end one B-SUP game by an admin
    from app.db.gamelog import append, load_state
    from app.game.rules import step

    first = next(g for g in await _games(db) if g.system == "B-SUP")
    async with db.session() as s, s.begin():
        state = await load_state(s, first.id)
        after, events = step(state, AdminEnd(at=time.time(), note="test"))
        await append(s, state, events, after, "admin")
    await _arrive(db, lobby, 10, prefix="r")
    counts = Counter(g.system for g in await _games(db))
    assert counts["B-SUP"] == 4
    # everything paused or full: arrivals wait; resuming assigns them
    async with db.session() as s, s.begin():
        await set_paused(s, "CONTROL", True, "test")
    await _arrive(db, lobby, 5, prefix="w")
    people = await _participants(db)
    assert sum(1 for p in people.values() if p.status == Status.WAITING) == 5
    async with db.session() as s, s.begin():
        await set_paused(s, "CONTROL", False, "test")
    await lobby.match()
    people = await _participants(db)
    assert sum(1 for p in people.values() if p.status == Status.WAITING) == 0
    async with db.session() as s:
        actions = [a for (a,) in await s.execute(select(AuditEntry.action).order_by(AuditEntry.id))]
    assert {"round_start", "deploy", "share", "quota", "pause", "resume"} <= set(actions)
    await db.close()


async def test_without_shares_the_settings_decide(sqlite_url):
    db, lobby = await _lobby(sqlite_url, LobbyPolicy(listener="model", system="model"))
    # a deploy registers the system with share 0: it moves no traffic by itself
    async with db.session() as s, s.begin():
        ck = (await deploy_checkpoint(s, "model", 1, "base", None)).id
        await deploy_checkpoint(s, "B-SUP", 1, "base", None)
    await _arrive(db, lobby, 4)
    games = await _games(db)
    assert [g.system for g in games] == ["model"] * 4 and {g.checkpoint for g in games} == {ck}
    assert all(g.round is None for g in games)
    lobby.policy = LobbyPolicy(listener="human")
    await _arrive(db, lobby, 4, prefix="h")
    human = [g for g in await _games(db) if g.listener_kind == "human"]
    assert len(human) == 2 and {g.system for g in human} == {"human"}
    await db.close()


async def test_a_blocked_worker_leaves_the_queue(sqlite_url):
    db, lobby = await _lobby(sqlite_url)  # human-human default: a lone worker waits
    [pid] = await _arrive(db, lobby, 1)
    people = await _participants(db)
    released = await lobby.block(people[pid].worker_hash, "spam", "test", participant_id=pid)
    assert released == [pid]
    people = await _participants(db)
    assert people[pid].status == Status.RELEASED and people[pid].released_reason == "blocked"
    async with db.session() as s:
        assert await s.get(BlockedWorker, people[pid].worker_hash) is not None
    await db.close()


# ---------------------------------------------------------------- through the server


def _adapter(tmp_path: Path, name: str) -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"method": "B-SUP", "name": name}))
    return str(folder)


async def _api(server, method: str, path: str, body=None, token: str | None = ADMIN_TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as c:
        r = await c.request(method, path, json=body, headers=headers)
    return r


async def _ok(server, method, path, body=None):
    r = await _api(server, method, path, body)
    assert r.status_code == 200, (path, r.status_code, r.text)
    return r.json()


async def _arrival(server, pid: str) -> BotClient:
    token = await join(server.url, {"PROLIFIC_PID": pid, "STUDY_ID": "s", "SESSION_ID": pid})
    return await BotClient(server.url, token).connect()


async def _game_rows(url: str) -> dict[str, Game]:
    db = Database(url)
    try:
        async with db.session() as s:
            return {g.id: g for g in (await s.execute(select(Game))).scalars()}
    finally:
        await db.close()


async def test_deploy_during_live_games_drops_nothing_and_new_games_get_the_new_checkpoint(
    start_server, database_url, tmp_path
):
    server = start_server(database_url)
    await _ok(server, "POST", "/api/operator/rounds", {"number": 1, "note": "first round"})
    d1 = await _ok(server, "POST", "/api/operator/deploy", {"system": "B-SUP", "round": 1, "adapter": _adapter(tmp_path, "r1")})
    await _ok(server, "POST", "/api/operator/systems/human/share", {"share": 1})
    # a human-human game in progress
    a, b = await _arrival(server, "w-a"), await _arrival(server, "w-b")
    va, vb = await a.wait_for(lambda c: c.view, 20), await b.wait_for(lambda c: c.view, 20)
    speaker, listener = (a, b) if va.seat == "speaker" else (b, a)
    human_game = va.game_id
    # now B-SUP takes all traffic; a speaker starts a model game on checkpoint r1 and speaks
    await _ok(server, "POST", "/api/operator/systems/B-SUP/share", {"share": 1})
    await _ok(server, "POST", "/api/operator/systems/human/share", {"share": 0})
    m1 = await _arrival(server, "w-m1")
    v1 = await m1.wait_for(lambda c: c.view and c.view.phase == "speaking" and c.view, 20)
    assert v1.listener_kind == "model"
    await m1.say("the first one")
    # deploy round 2 while both games run
    d2 = await _ok(server, "POST", "/api/operator/deploy",
                   {"system": "B-SUP", "round": 2, "adapter": _adapter(tmp_path, "r2"), "start_round": True})
    assert d2["checkpoint"] != d1["checkpoint"] and d2["current_round"] == 2
    m2 = await _arrival(server, "w-m2")
    v2 = await m2.wait_for(lambda c: c.view and c.view.phase == "speaking" and c.view, 20)
    await m2.say("the second one")
    # the human game goes on to its end, unaffected
    sv, lv = await asyncio.gather(play_speaker(speaker), play_listener(listener))
    assert sv.outcome == "successful" and sv.game_id == human_game
    rows = await _game_rows(database_url)
    assert rows[v1.game_id].status == "live" and rows[v1.game_id].checkpoint == d1["checkpoint"]
    assert rows[v1.game_id].round == 1 and rows[v2.game_id].round == 2
    assert rows[v2.game_id].checkpoint == d2["checkpoint"] and rows[v2.game_id].system == "B-SUP"
    db = Database(database_url)
    async with db.session() as s:
        reqs = {r.game_id: r for r in (await s.execute(select(ListenerRequest))).scalars()}
    await db.close()
    assert reqs[v1.game_id].checkpoint == d1["checkpoint"]  # what the worker will load
    assert reqs[v2.game_id].checkpoint == d2["checkpoint"]
    systems = await _ok(server, "GET", "/api/operator/systems")
    bsup = next(x for x in systems["systems"] if x["name"] == "B-SUP")
    assert bsup["checkpoint"] == d2["checkpoint"] and systems["round"] == 2
    for c in (a, b, m1, m2):
        await c.close()
    assert await check_database(database_url) == []


async def test_operator_api_changes_are_audited_under_the_token_fingerprint(start_server, sqlite_url, tmp_path):
    server = start_server(sqlite_url)
    await _ok(server, "POST", "/api/operator/systems", {"name": "CONTROL", "share": 0.5})
    await _ok(server, "POST", "/api/operator/systems/CONTROL/quota", {"quota": 330})
    await _ok(server, "POST", "/api/operator/systems/CONTROL/pause")
    await _ok(server, "POST", "/api/operator/systems/CONTROL/resume")
    await _ok(server, "POST", "/api/operator/rounds", {"note": "pilot"})
    d = await _ok(server, "POST", "/api/operator/deploy", {"system": "B-SUP", "round": 0, "adapter": _adapter(tmp_path, "a")})
    assert d["active"] and d["checkpoint"].startswith("B-SUP-r0-")
    listed = await _ok(server, "GET", "/api/operator/systems")
    control = next(x for x in listed["systems"] if x["name"] == "CONTROL")
    assert control["share"] == 0.5 and control["quota"] == 330 and not control["paused"]
    # bad requests are refused with reasons
    assert (await _api(server, "POST", "/api/operator/systems/NOPE/share", {"share": 1})).status_code == 404
    assert (await _api(server, "POST", "/api/operator/systems/CONTROL/share", {"share": -1})).status_code == 422
    assert (await _api(server, "POST", "/api/operator/deploy", {"system": "X", "round": 1, "adapter": "/no/such"})).status_code == 422
    assert (await _api(server, "POST", "/api/operator/deploy", {"system": "human", "round": 1})).status_code == 422
    assert (await _api(server, "POST", "/api/operator/rounds", {"number": 0})).status_code == 409
    entries = await _ok(server, "GET", "/api/admin/audit")
    actions = [e["action"] for e in entries]
    for a in ("system_add", "share", "quota", "pause", "resume", "round_start", "deploy"):
        assert a in actions, a
    assert {e["actor"] for e in entries} == {FINGERPRINT}
    assert ADMIN_TOKEN not in json.dumps(entries)
    assert ADMIN_TOKEN not in server.log_path.read_text()
    checkpoints = await _ok(server, "GET", "/api/operator/checkpoints")
    assert checkpoints[0]["deployed_by"] == FINGERPRINT


async def test_admin_api_live_view_replay_end_block_and_overview(start_server, sqlite_url, kilogram_dir):
    server = start_server(sqlite_url)
    ids = sorted(p.stem for p in kilogram_dir.glob("*.svg"))[:10]
    config = GameConfig(context=tuple(ids), targets=tuple(ids[:3]), speaker_order=tuple(ids),
                        listener_order=tuple(reversed(ids)))
    created = await create_game(server.url, ADMIN_TOKEN, config)
    gid = created["game_id"]
    speaker = await BotClient(server.url, created["speaker_token"]).connect()
    listener = await BotClient(server.url, created["listener_token"]).connect()
    await speaker.wait_for(lambda b: b.view and b.view.phase == "speaking")
    await speaker.say("select <script>alert(1)</script> the bird")
    await listener.wait_for(lambda b: b.view and b.view.phase == "selecting")
    await listener.click(ids[0])
    await speaker.wait_for(lambda b: any(t.selected for t in b.view.tiles))
    # a worker heartbeat, as a policy worker writes it
    db = Database(sqlite_url)
    async with db.session() as s, s.begin():
        s.add(WorkerHeartbeat(worker_id="gpu-1", host="node7", systems=["B-SUP"], status="serving",
                              checkpoints={"base": "idefics2", "loaded": ["B-SUP-r1-abc"], "served": 12},
                              started_at=time.time() - 60, beat_at=time.time()))
    await db.close()
    o = await _ok(server, "GET", "/api/admin/overview")
    [live] = [g for g in o["live_games"] if g["game_id"] == gid]
    assert live["turn"] == 1 and live["system"] == "human" and live["elapsed_seconds"] >= 0
    assert o["lobby_size"] == 0
    [w] = o["workers"]
    assert w["healthy"] and w["loaded_checkpoints"] == ["B-SUP-r1-abc"] and w["systems"] == ["B-SUP"]
    d = await _ok(server, "GET", f"/api/admin/games/{gid}")
    sp, li = d["screens"]["speaker"], d["screens"]["listener"]
    assert [t["tangram_id"] for t in sp["tiles"]] == list(config.speaker_order)
    assert [t["tangram_id"] for t in li["tiles"]] == list(config.listener_order)
    assert {t["tangram_id"] for t in sp["tiles"] if t["target"]} == set(config.targets)
    assert all(t["target"] is None for t in li["tiles"])
    assert sp["messages"][0]["text"] == "select <script>alert(1)</script> the bird"
    assert [t["tangram_id"] for t in li["tiles"] if t["selected"]] == [ids[0]]
    # end it with a reason: both players are paid and get codes
    r = await _api(server, "POST", f"/api/admin/games/{gid}/end", {"reason": "success"})
    assert r.status_code == 422
    end = await _ok(server, "POST", f"/api/admin/games/{gid}/end", {"note": "speaker typed spam"})
    assert end["end_reason"] == "admin_ended" and end["outcome"] == "aborted"
    for bot in (speaker, listener):
        v = await bot.wait_for(lambda b: b.view.phase == "ended" and b.view.completion_code and b.view, 20)
        assert v.end_reason == "admin_ended" and v.pay is not None
    assert (await _api(server, "POST", f"/api/admin/games/{gid}/end", {})).status_code == 409
    # the replay rebuilds the game from its log, one step per event
    rep = await _ok(server, "GET", f"/api/admin/games/{gid}/replay")
    types = [s["type"] for s in rep["steps"]]
    assert types[0] == "game_created" and types[-1] == "game_ended" and "utterance_sent" in types
    assert [s["seq"] for s in rep["steps"]] == list(range(1, len(types) + 1))
    assert rep["steps"][-1]["phase"] == "ended"
    # block the speaker's worker: they cannot come back
    sid = (await _game_rows(sqlite_url))[gid].speaker_id
    blocked = await _ok(server, "POST", f"/api/admin/participants/{sid}/block", {"reason": "spam"})
    assert blocked["blocked"]
    assert (await _api(server, "POST", "/api/admin/participants/nobody/block", {})).status_code == 404
    entries = await _ok(server, "GET", "/api/admin/audit")
    ended = next(e for e in entries if e["action"] == "end_game")
    assert ended["target"] == gid and ended["details"]["note"] == "speaker typed spam"
    assert any(e["action"] == "block" and e["target"] == sid for e in entries)
    await speaker.close()
    await listener.close()
    assert await check_database(sqlite_url) == []


async def test_a_blocked_study_worker_is_refused_at_arrival(start_server, sqlite_url):
    server = start_server(sqlite_url)
    bot = await _arrival(server, "spammer")
    await bot.wait_for(lambda b: b.lobby, 10)
    pid = bot.welcome.participant_id
    r = await _ok(server, "POST", f"/api/admin/participants/{pid}/block", {"reason": "bot-like"})
    assert r["released"] == [pid]
    frame = await bot.wait_for(lambda b: b.released, 10)
    assert frame.reason == "blocked"
    await bot.close()
    async with httpx.AsyncClient(base_url=server.url) as c:
        again = await c.post("/api/join", json={"params": {"PROLIFIC_PID": "spammer", "STUDY_ID": "s", "SESSION_ID": "2"}})
    assert again.status_code == 403 and again.json()["code"] == "blocked"


def _protected_routes():
    from app.settings import Settings
    from app.web.server import create_app

    app = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:"))

    def walk(routes, prefix=""):  # FastAPI >= 0.120 keeps included routers nested
        for route in routes:
            nested = getattr(route, "original_router", None)
            if nested is not None:
                context = getattr(route, "include_context", None)
                yield from walk(nested.routes, prefix + (getattr(context, "prefix", "") or ""))
            else:
                yield prefix, route

    out = []
    for prefix, route in walk(app.routes):
        path = prefix + getattr(route, "path", "")
        methods = getattr(route, "methods", None) or set()
        if not path.startswith(("/api/admin", "/api/operator", "/admin")):
            continue
        if path.startswith("/admin/login"):
            continue  # the login form itself is public
        for m in sorted(methods - {"HEAD", "OPTIONS"}):
            out.append((m, path.replace("{game_id}", "g1").replace("{name}", "B-SUP").replace("{participant_id}", "p1")))
    return out


def test_admin_and_operator_token_checks_run_on_the_event_loop():
    """FastAPI runs a plain ``def`` dependency in a worker thread: the token check then cost
    every game created through the admin API a thread hop (and the server a stream of new
    threads). Every dependency of the bearer-token routes is a coroutine function."""
    import inspect

    from fastapi.routing import APIRoute

    from app.web import admin, operator

    def calls(dependant):
        for dep in dependant.dependencies:
            yield dep.call
            yield from calls(dep)

    routes = [r for router in (admin.router, operator.router) for r in router.routes if isinstance(r, APIRoute)]
    assert any(r.path.endswith("/games") and "POST" in r.methods for r in routes)
    sync = {(r.path, c.__name__) for r in routes for c in calls(r.dependant) if not inspect.iscoroutinefunction(c)}
    assert not sync


async def test_every_admin_operator_and_dashboard_route_refuses_a_missing_or_wrong_token(start_server, sqlite_url):
    server = start_server(sqlite_url)
    routes = _protected_routes()
    paths = {p for _, p in routes}
    assert {"/api/admin/overview", "/api/operator/deploy", "/api/operator/systems", "/admin",
            "/admin/api/overview", "/admin/games/g1/end", "/admin/block"} <= paths
    assert len(routes) >= 30
    attempts = {
        "none": {},
        "wrong bearer": {"Authorization": "Bearer not-the-token"},
        "not bearer": {"Authorization": ADMIN_TOKEN},
        "basic": {"Authorization": "Basic " + ADMIN_TOKEN},
        "forged cookie": {"Cookie": "mr_admin=eyJmcCI6IjAwMDAwMDAwMDAwMCJ9.forged.sig"},
    }
    async with httpx.AsyncClient(base_url=server.url, timeout=20, follow_redirects=False) as c:
        for method, path in routes:
            for label, headers in attempts.items():
                for query in ("", f"?token={ADMIN_TOKEN}&admin_token={ADMIN_TOKEN}&access_token={ADMIN_TOKEN}"):
                    r = await c.request(method, path + query, headers=headers, json={} if method == "POST" else None)
                    refused = r.status_code in (401, 403) or (
                        r.status_code == 303 and r.headers["location"] == "/admin/login" and method == "GET"
                    )
                    assert refused, (method, path, label, query, r.status_code, r.text[:200])
            if path.startswith("/admin"):  # a valid bearer token is no dashboard session
                r = await c.request(method, path, headers=AUTH, json={} if method == "POST" else None)
                assert r.status_code in (401, 403, 303), (method, path, r.status_code)
    assert ADMIN_TOKEN not in server.log_path.read_text()


def test_operator_commands(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from app.cli import app

    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.sqlite3'}"
    monkeypatch.setenv("MULTIREF_DATABASE_URL", url)
    runner = CliRunner()
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    steps = [
        ["round", "start", "3", "--note", "three"],
        ["deploy", "--system", "B-SUP", "--round", "3", "--adapter", str(adapter), "--base", "tiny"],
        ["systems", "share", "B-SUP", "0.7"],
        ["systems", "add", "human", "--share", "0.3"],
        ["systems", "quota", "B-SUP", "330"],
        ["systems", "pause", "B-SUP"],
        ["systems", "resume", "B-SUP"],
        ["systems", "list"],
        ["round", "list"],
    ]
    for args in steps:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
    listed = runner.invoke(app, ["systems", "list"]).output
    assert "B-SUP" in listed and "0.7" in listed and "330" in listed and "human" in listed
    assert runner.invoke(app, ["systems", "share", "NOPE", "1"]).exit_code == 1
    assert runner.invoke(app, ["round", "start", "3"]).exit_code == 1
    assert runner.invoke(app, ["block", "nobody"]).exit_code == 1

    async def audit_rows():
        db = Database(url)
        async with db.session() as s:
            rows = list((await s.execute(select(AuditEntry).order_by(AuditEntry.id))).scalars())
        await db.close()
        return rows

    rows = asyncio.run(audit_rows())
    assert [r.action for r in rows] == [
        "round_start", "deploy", "share", "system_add", "share", "quota", "pause", "resume"
    ]
    assert all(r.actor.startswith("cli") for r in rows[2:]) and rows[1].actor == "cli"
    for name in ("export", "import", "systems", "round", "block"):
        assert runner.invoke(app, [name, "--help"]).exit_code == 0


# ---------------------------------------------------------------- with a real policy worker

from tests.test_model_listener import MODEL_ENV, _requests, _speaker_game, start_worker, tiny_adapters, tiny_model  # noqa: E402,F401


@pytest.mark.model
async def test_a_deploy_over_http_reaches_a_running_worker_without_restart(
    start_server, start_worker, sqlite_url, tiny_model, tiny_adapters
):
    a, b = tiny_adapters
    server = start_server(sqlite_url, **MODEL_ENV)
    first_ck = (await _ok(server, "POST", "/api/operator/deploy",
                          {"system": "model", "round": 1, "base": str(tiny_model), "adapter": str(a), "start_round": True}))["checkpoint"]
    start_worker(sqlite_url, tiny_model)
    first, _ = await _speaker_game(server.url, "early")
    await first.wait_for(lambda c: c.view.phase == "speaking")
    await first.say("select the bird")
    await first.wait_for(lambda c: c.view.turn == 2 or c.view.phase == "ended", 120)
    second_ck = (await _ok(server, "POST", "/api/operator/deploy",
                           {"system": "model", "round": 2, "base": str(tiny_model), "adapter": str(b), "start_round": True}))["checkpoint"]
    second, _ = await _speaker_game(server.url, "late")
    v1, v2 = await asyncio.gather(play_speaker(first, timeout=120), play_speaker(second, timeout=120))
    assert v1.phase == v2.phase == "ended"
    # the applier marks a request applied just after the game's last event: read once settled
    reqs = await _requests(sqlite_url, v1.game_id) + await _requests(sqlite_url, v2.game_id)
    db = Database(sqlite_url)
    async with db.session() as s:
        beats = list((await s.execute(select(WorkerHeartbeat))).scalars())
    await db.close()
    assert {r.checkpoint for r in reqs if r.game_id == v1.game_id} == {first_ck}
    assert {r.checkpoint for r in reqs if r.game_id == v2.game_id} == {second_ck}
    assert all(r.status == "applied" for r in reqs)
    assert len(beats) == 1 and set(beats[0].checkpoints["loaded"]) == {first_ck, second_ck}
    o = await _ok(server, "GET", "/api/admin/overview")
    assert o["workers"][0]["loaded_checkpoints"] == sorted([first_ck, second_ck])
    [model] = [x for x in o["systems"] if x["name"] == "model"]
    assert model["checkpoint"] == second_ck and model["workers"] == [beats[0].worker_id]
    for c in (first, second):
        await c.close()
