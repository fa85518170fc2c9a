"""Security tests against real server processes (SECURITY.md lists the threats they cover):
seat tokens (forged, tampered, replayed, used for another seat or game), admin authentication
(bearer header only, dashboard forms with CSRF tokens), per-connection rate limits and
per-address connection limits, frame and utterance bounds, text shown exactly and never as
HTML, injection through ids and names, and worker ids never stored raw."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from pathlib import Path

import httpx
import pytest
import websockets
from sqlalchemy import MetaData, func, select

from app.bot import BotClient, create_game, join, play_listener, play_speaker, ws_url
from app.db.database import Database
from app.db.models import Game, GameEvent, Participant, Turn
from app.web.auth import ParticipantTokens
from tests.conftest import ADMIN_TOKEN, ROOT, ServerProcess
from tests.test_faults import game_config

SECRET = "security-tests-secret-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory, kilogram_dir) -> ServerProcess:
    """One server for the tests that need no special settings (default rate limits)."""
    tmp = tmp_path_factory.mktemp("security")
    proc = ServerProcess(
        f"sqlite+aiosqlite:///{tmp / 'multiref.sqlite3'}", kilogram_dir, tmp, MULTIREF_SECRET_KEY=SECRET
    ).start()
    yield proc
    proc.stop()


# ---------------------------------------------------------------- helpers


class Socket:
    """A raw websocket speaking JSON frames, for what a bot would never send."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.frames: list[dict] = []

    @classmethod
    async def open(cls, base_url: str, token: str | None = None) -> "Socket":
        sock = cls(await websockets.connect(ws_url(base_url), max_size=2**20, open_timeout=10))
        if token is not None:
            await sock.send({"type": "hello", "token": token})
        return sock

    async def send(self, frame: dict | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def until(self, predicate, timeout: float = 5.0) -> dict:
        """Read frames until one satisfies ``predicate``; returns it."""
        for f in self.frames:
            if predicate(f):
                return f
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching frame; got {[x.get('type') for x in self.frames]}")
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), left))
            self.frames.append(frame)
            if predicate(frame):
                return frame

    async def error(self, code: str, timeout: float = 5.0) -> dict:
        return await self.until(lambda f: f.get("type") == "error" and f.get("code") == code, timeout)

    async def view(self, predicate=lambda v: True, timeout: float = 5.0) -> dict:
        frame = await self.until(lambda f: f.get("type") == "state" and predicate(f["view"]), timeout)
        return frame["view"]

    async def settle(self) -> None:
        """Wait until the server has handled everything sent so far (ping/pong is in order)."""
        nonce = uuid.uuid4().hex[:12]
        await self.send({"type": "ping", "nonce": nonce})
        await self.until(lambda f: f.get("type") == "pong" and f.get("nonce") == nonce)

    def errors(self) -> list[str]:
        return [f["code"] for f in self.frames if f.get("type") == "error"]

    async def close(self) -> None:
        await self.ws.close()


async def event_count(url: str, game_id: str) -> int:
    db = Database(url)
    try:
        async with db.session() as s:
            return (await s.execute(select(func.count()).select_from(GameEvent).where(GameEvent.game_id == game_id))).scalar_one()
    finally:
        await db.close()


async def game_row(url: str, game_id: str) -> dict:
    db = Database(url)
    try:
        async with db.session() as s:
            g = await s.get(Game, game_id)
            return {c.name: getattr(g, c.name) for c in Game.__table__.columns}
    finally:
        await db.close()


async def started_game(base_url: str, kilogram_dir: Path, seed: int = 0) -> tuple[dict, Socket, Socket, dict]:
    """A human-human game with both seats connected, the speaker to play."""
    created = await create_game(base_url, ADMIN_TOKEN, game_config(kilogram_dir, 3, seed=seed))
    speaker = await Socket.open(base_url, created["speaker_token"])
    listener = await Socket.open(base_url, created["listener_token"])
    view = await speaker.view(lambda v: v["phase"] == "speaking")
    await listener.view(lambda v: v["phase"] == "speaking")
    return created, speaker, listener, view


def raw_http(port: int, path: str) -> tuple[int, bytes]:
    """A request whose path is sent exactly as written (no client-side normalisation)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data


# ---------------------------------------------------------------- seat tokens


async def test_forged_and_tampered_tokens_are_refused(server):
    token = await join(server.url, {"PROLIFIC_PID": "sec-forge", "STUDY_ID": "s", "SESSION_ID": "1"})
    pid = ParticipantTokens(SECRET).verify(token)
    assert pid is not None
    payload, signature = token.rsplit(".", 1)
    other_pid = ParticipantTokens(SECRET).verify(await join(server.url)) or ""
    forged = {
        "another server's secret": ParticipantTokens("some-other-secret").issue(pid),
        "tampered signature": payload + "." + signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB"),
        "payload of another participant": ParticipantTokens("x").issue(other_pid).rsplit(".", 1)[0] + "." + signature,
        "unsigned": payload,
        "empty": "",
        "garbage": "' OR '1'='1",
    }
    for what, bad in forged.items():
        sock = await Socket.open(server.url, bad)
        frame = await sock.until(lambda f: f.get("type") == "error")
        assert frame["code"] == "bad_token", what
        with pytest.raises(websockets.ConnectionClosed):  # and the connection is closed
            await asyncio.wait_for(sock.ws.recv(), 5)
        assert not any(f.get("type") in ("welcome", "state", "lobby") for f in sock.frames), what
        async with httpx.AsyncClient(base_url=server.url) as c:
            for method, path in (("GET", "/api/participant"), ("POST", "/api/consent")):
                r = await c.request(method, path, headers={"Authorization": f"Bearer {bad}".strip()})
                assert r.status_code == 401, (what, path)
    # the genuine token still works
    async with httpx.AsyncClient(base_url=server.url) as c:
        r = await c.get("/api/participant", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["participant_id"] == pid


async def test_a_token_acts_only_as_its_own_seat(server, kilogram_dir):
    created, speaker, listener, view = await started_game(server.url, kilogram_dir, seed=21)
    v = view["version"]
    tile = view["tiles"][0]["tangram_id"]
    before = await event_count(server.database_url, created["game_id"])
    # the speaker cannot select or submit; the listener cannot speak
    await speaker.send({"type": "click", "version": v, "tangram_id": tile})
    await speaker.send({"type": "submit", "version": v})
    await listener.send({"type": "send_utterance", "version": v, "text": "select all"})
    # frames cannot name a seat, a participant or a game: extra fields are refused
    for extra in ({"seat": "listener"}, {"game_id": created["game_id"]}, {"participant_id": "x"}):
        await speaker.send({"type": "click", "version": v, "tangram_id": tile, **extra})
    # a connection cannot switch to the partner's seat by saying hello with its token
    await speaker.send({"type": "hello", "token": created["listener_token"]})
    await speaker.settle()
    await listener.settle()
    assert speaker.errors() == ["not_your_seat", "not_your_seat", "invalid_frame", "invalid_frame", "invalid_frame", "bad_token"]
    assert listener.errors() == ["not_your_seat"]
    assert await event_count(server.database_url, created["game_id"]) == before
    # every view the speaker's connection got is the speaker's (targets shown), never the listener's
    views = [f["view"] for f in speaker.frames if f.get("type") == "state"]
    assert views and all(x["seat"] == "speaker" for x in views)
    for s in (speaker, listener):
        await s.close()


async def test_a_token_cannot_reach_another_game(server, kilogram_dir):
    one, s1, l1, v1 = await started_game(server.url, kilogram_dir, seed=31)
    two, s2, l2, v2 = await started_game(server.url, kilogram_dir, seed=32)
    await s2.send({"type": "send_utterance", "version": v2["version"], "text": "hello"})
    v2 = await l2.view(lambda v: v["phase"] == "selecting")
    before = await event_count(server.database_url, one["game_id"])
    foreign = [t["tangram_id"] for t in v1["tiles"] if t["tangram_id"] not in {x["tangram_id"] for x in v2["tiles"]}]
    assert foreign
    # game two's listener clicks game one's images with game one's version: unknown here
    await l2.send({"type": "click", "version": v2["version"], "tangram_id": foreign[0]})
    await l2.send({"type": "click", "version": v1["version"], "tangram_id": foreign[0]})
    await l2.settle()
    assert l2.errors() == ["unknown_tangram", "stale_version"]
    assert await event_count(server.database_url, one["game_id"]) == before
    assert all(f["view"]["game_id"] == two["game_id"] for f in l2.frames if f.get("type") == "state")
    for s in (s1, l1, s2, l2):
        await s.close()


async def test_a_token_replayed_after_the_game_ended_acts_for_nothing(server, kilogram_dir):
    created, speaker, listener, view = await started_game(server.url, kilogram_dir, seed=41)
    await speaker.send({"type": "leave"})
    final = await listener.view(lambda v: v["phase"] == "ended")
    await speaker.close()
    await listener.close()
    game_id = created["game_id"]
    events, row = await event_count(server.database_url, game_id), await game_row(server.database_url, game_id)
    for token, frames in (
        (created["speaker_token"], [
            {"type": "send_utterance", "version": final["version"], "text": "one more"},
            {"type": "draft", "text": "a draft after the end"},
            {"type": "leave"},
        ]),
        (created["listener_token"], [
            {"type": "click", "version": final["version"], "tangram_id": view["tiles"][0]["tangram_id"]},
            {"type": "submit", "version": final["version"]},
        ]),
    ):
        sock = await Socket.open(server.url, token)
        replayed = await sock.view()
        assert replayed["phase"] == "ended" and replayed["version"] == final["version"]
        for f in frames:
            await sock.send(f)
        await sock.settle()
        assert set(sock.errors()) <= {"game_ended"} and len(sock.errors()) == len([f for f in frames if f["type"] != "draft"])
        await sock.close()
    assert await event_count(server.database_url, game_id) == events
    after = await game_row(server.database_url, game_id)
    assert after == row  # not even the draft changed


# ---------------------------------------------------------------- admin authentication


def _admin_routes(server) -> list[tuple[str, str]]:
    spec = httpx.get(server.url + "/openapi.json").json()
    routes = []
    for path, item in spec["paths"].items():
        if path.startswith(("/api/admin", "/api/operator")):
            for method in item:
                routes.append((method.upper(), re.sub(r"\{[^}]+\}", "x", path)))
    return routes


async def test_admin_and_operator_routes_need_the_bearer_header(server):
    routes = _admin_routes(server)
    assert any(p.startswith("/api/admin") for _, p in routes)
    bad_auth = [
        {},
        {"headers": {"Authorization": "Bearer wrong-token"}},
        {"headers": {"Authorization": f"Basic {ADMIN_TOKEN}"}},
        {"headers": {"Authorization": ADMIN_TOKEN}},
        {"headers": {"X-Admin-Token": ADMIN_TOKEN}},
        {"params": {"token": ADMIN_TOKEN}},  # tokens in query strings are ignored
        {"params": {"access_token": ADMIN_TOKEN}},
        {"params": {"admin_token": ADMIN_TOKEN}},
        {"cookies": {"Authorization": f"Bearer {ADMIN_TOKEN}"}},  # nor cookies
        {"cookies": {"admin_token": ADMIN_TOKEN}},
    ]
    for kw in bad_auth:
        async with httpx.AsyncClient(base_url=server.url, cookies=kw.get("cookies")) as c:
            for method, path in routes:
                r = await c.request(
                    method, path, json={} if method == "POST" else None,
                    headers=kw.get("headers"), params=kw.get("params"),
                )
                assert r.status_code == 401, (method, path, kw, r.status_code)
    async with httpx.AsyncClient(base_url=server.url) as c:
        ok = await c.get("/api/admin/games", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert ok.status_code == 200


def _csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


async def test_dashboard_forms_refuse_posts_without_the_csrf_token(server, kilogram_dir):
    if not (ROOT / "app" / "web" / "dashboard.py").is_file():
        pytest.skip("no admin dashboard with forms (app/web/dashboard.py)")
    created = await create_game(server.url, ADMIN_TOKEN, game_config(kilogram_dir, 3, seed=51))
    game_id = created["game_id"]
    async with httpx.AsyncClient(base_url=server.url) as c:
        # the login form itself carries a CSRF token bound to a pre-login cookie
        r = await c.post("/admin/login", data={"token": ADMIN_TOKEN})
        assert r.status_code == 403
        page = await c.get("/admin/login")
        r = await c.post("/admin/login", data={"token": ADMIN_TOKEN, "csrf": "not-it"})
        assert r.status_code == 403
        r = await c.post("/admin/login", data={"token": ADMIN_TOKEN, "csrf": _csrf(page.text)})
        assert r.status_code == 303 and "mr_admin" in c.cookies
        csrf = _csrf((await c.get("/admin")).text)
        end = f"/admin/games/{game_id}/end"
        for data, headers in (
            ({"reason": "admin_ended"}, {}),  # no token
            ({"reason": "admin_ended", "csrf": "forged"}, {}),  # a wrong one
            ({"reason": "admin_ended", "csrf": csrf}, {"Origin": "https://evil.example"}),  # cross-site
            ({"reason": "admin_ended", "csrf": csrf}, {"Origin": "null"}),
        ):
            r = await c.post(end, data=data, headers=headers)
            assert r.status_code == 403, (data, headers)
        assert (await game_row(server.database_url, game_id))["status"] == "live"
        # the dashboard session cookie opens nothing on the bearer API
        r = await c.get("/api/admin/games")
        assert r.status_code == 401
        # and the genuine form works
        r = await c.post(end, data={"reason": "admin_ended", "csrf": csrf}, headers={"Origin": server.url})
        assert r.status_code == 303
    assert (await game_row(server.database_url, game_id))["end_reason"] == "admin_ended"


# ---------------------------------------------------------------- limits


async def test_a_flood_of_messages_is_rate_limited_per_connection(server):
    token = await join(server.url)
    flood = await Socket.open(server.url, token)
    calm = await Socket.open(server.url, await join(server.url))
    await flood.until(lambda f: f.get("type") == "welcome")
    for i in range(300):
        await flood.send({"type": "ping", "nonce": str(i)})
    await asyncio.sleep(0.5)
    await flood.until(lambda f: len([x for x in flood.frames if x.get("type") in ("pong", "error")]) >= 300, 10)
    pongs = sum(1 for f in flood.frames if f.get("type") == "pong")
    limited = flood.errors().count("rate_limited")
    # a burst of 40, then 20/s: most of 300 frames sent at once are refused, each one answered
    assert limited >= 100 and pongs + limited == 300 and pongs >= 40, (pongs, limited)
    await calm.settle()  # another connection is not affected
    await asyncio.sleep(2.5)  # the bucket refills: the flooder may talk again
    await flood.settle()
    for s in (flood, calm):
        await s.close()


async def test_connections_per_address_are_limited(start_server, sqlite_url):
    limited = start_server(sqlite_url, MULTIREF_MAX_CONNECTIONS_PER_ADDRESS="3")
    socks = [await Socket.open(limited.url, await join(limited.url)) for _ in range(3)]
    for s in socks:
        await s.until(lambda f: f.get("type") == "welcome")
    extra = await Socket.open(limited.url)
    assert (await extra.until(lambda f: f.get("type") == "error"))["code"] == "too_many_connections"
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(extra.ws.recv(), 5)
    assert closed.value.rcvd.code == 1008
    # connections that end, even abruptly, give their place back
    socks[0].ws.transport.abort()
    await socks[1].close()
    await asyncio.sleep(0.5)
    again = [await Socket.open(limited.url, await join(limited.url)) for _ in range(2)]
    for s in again:
        await s.until(lambda f: f.get("type") == "welcome")
    for s in again + socks[2:]:
        await s.close()
    assert httpx.get(limited.url + "/healthz").status_code == 200


async def test_frames_and_utterances_are_bounded(server, kilogram_dir):
    created, speaker, listener, view = await started_game(server.url, kilogram_dir, seed=61)
    await speaker.send({"type": "send_utterance", "version": view["version"], "text": "x" * 501})
    await speaker.error("utterance_too_long")
    await speaker.send({"type": "draft", "text": "y" * 501})
    await speaker.error("utterance_too_long")
    await speaker.send(json.dumps({"type": "ping", "nonce": "n", "pad": "z" * 9000}))
    await speaker.error("frame_too_large")
    await speaker.settle()
    assert (await game_row(server.database_url, created["game_id"]))["speaker_draft"] == ""
    # exactly at the bound is fine
    await speaker.send({"type": "send_utterance", "version": view["version"], "text": "w" * 500})
    assert (await listener.view(lambda v: v["phase"] == "selecting"))["messages"][-1]["text"] == "w" * 500
    # a frame past the websocket's own limit closes that connection, and only that one
    await speaker.send("{" + " " * 40000 + "}")
    with pytest.raises(websockets.ConnectionClosed):
        for _ in range(50):
            await asyncio.wait_for(speaker.ws.recv(), 5)
    await listener.settle()
    assert httpx.get(server.url + "/healthz").status_code == 200
    await listener.close()


HTML = """<script>alert("x")</script> <img src=x onerror=alert(1)> &amp; &lt;b&gt; "double" 'single' </textarea>"""


async def test_html_in_utterances_is_stored_and_echoed_exactly(server, kilogram_dir):
    created, speaker, listener, view = await started_game(server.url, kilogram_dir, seed=71)
    await speaker.send({"type": "send_utterance", "version": view["version"], "text": HTML})
    for sock in (speaker, listener):
        shown = await sock.view(lambda v: v["phase"] == "selecting")
        assert shown["messages"][-1]["text"] == HTML
    db = Database(server.database_url)
    try:
        async with db.session() as s:
            turn = await s.get(Turn, (created["game_id"], 1))
            data = (await s.execute(select(GameEvent.data).where(
                GameEvent.game_id == created["game_id"], GameEvent.type == "utterance_sent"))).scalar_one()
    finally:
        await db.close()
    assert turn.utterance == HTML and data["text"] == HTML
    for s in (speaker, listener):
        await s.close()


def test_the_browser_scripts_never_insert_html():
    """People's text reaches the page through textContent only (the server sends it raw)."""
    sinks = re.compile(r"\.(innerHTML|outerHTML)\s*[+]?=|insertAdjacentHTML|document\.write|\beval\(")
    offenders = []
    for js in sorted((ROOT / "static").rglob("*.js")):
        for n, line in enumerate(js.read_text(errors="replace").splitlines(), 1):
            if sinks.search(line):
                offenders.append(f"{js.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


async def test_study_link_parameters_are_not_reflected_as_html(server):
    payload = '"><script>alert(1)</script>'
    async with httpx.AsyncClient(base_url=server.url) as c:
        r = await c.get("/", params={"PROLIFIC_PID": payload, "STUDY_ID": payload, "SESSION_ID": "1"})
    assert r.status_code == 200 and "<script>alert(1)" not in r.text


# ---------------------------------------------------------------- injection through ids and names


SQLISH = ["'; DROP TABLE games; --", "1 OR 1=1", "\" OR \"\"=\"", "x'); DELETE FROM participants; --"]
TRAVERSAL = ["../../etc/passwd", "..\\..\\windows\\win.ini", "/etc/passwd", "%2e%2e%2fetc%2fpasswd", "page1-1/../../x"]


async def test_sql_and_path_strings_in_tangram_ids_are_unknown_images(server, kilogram_dir):
    created, speaker, listener, view = await started_game(server.url, kilogram_dir, seed=81)
    await speaker.send({"type": "send_utterance", "version": view["version"], "text": "select it"})
    v = (await listener.view(lambda x: x["phase"] == "selecting"))["version"]
    for tid in SQLISH + TRAVERSAL:
        await listener.send({"type": "click", "version": v, "tangram_id": tid})
    await listener.settle()
    assert listener.errors() == ["unknown_tangram"] * len(SQLISH + TRAVERSAL)
    db = Database(server.database_url)
    try:
        async with db.session() as s:
            assert (await s.execute(select(func.count()).select_from(Game))).scalar_one() > 0
            assert (await s.execute(select(func.count()).select_from(Participant))).scalar_one() > 0
    finally:
        await db.close()
    for s in (speaker, listener):
        await s.close()


async def test_sql_and_path_strings_in_study_params_are_kept_as_data(server):
    params = {"PROLIFIC_PID": "sql-" + SQLISH[0], "STUDY_ID": TRAVERSAL[0], "SESSION_ID": SQLISH[3]}
    async with httpx.AsyncClient(base_url=server.url) as c:
        r = await c.post("/api/join", json={"params": params})
        assert r.status_code == 200
        pid = r.json()["participant_id"]
        # names outside the study-link vocabulary, odd keys, oversized values: refused, never a 500
        r = await c.post("/api/join", json={"params": {"../x": "1", "'; --": "2", "worker": "w" * 5000}})
        assert 200 <= r.status_code < 500
    db = Database(server.database_url)
    try:
        async with db.session() as s:
            p = await s.get(Participant, pid)
            assert p.study_id == TRAVERSAL[0] and p.session_id == SQLISH[3]
            assert (await s.execute(select(func.count()).select_from(Participant))).scalar_one() >= 1
    finally:
        await db.close()


@pytest.mark.parametrize(
    "path",
    [
        "/tangrams/../../etc/passwd",
        "/tangrams/..%2F..%2Fetc%2Fpasswd",
        "/tangrams/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/tangrams/..%5C..%5Cetc%5Cpasswd",
        "/tangrams/....//....//etc/passwd",
        "/tangrams/%00.svg",
        "/static/../../etc/passwd",
        "/static/..%2F..%2Fpyproject.toml",
        "/static/%2e%2e/%2e%2e/pyproject.toml",
    ],
)
def test_path_traversal_urls_are_not_found(server, path):
    status, body = raw_http(server.port, path)
    assert status in (400, 404), (path, status)
    assert b"root:x:0:0" not in body and b"[project]" not in body


async def test_admin_game_configs_must_name_tangrams_of_the_set(server):
    from app.game.rules import GameConfig

    ids = [f"../../etc/passwd{i}" for i in range(10)]
    config = GameConfig(context=tuple(ids), targets=tuple(ids[:3]), speaker_order=tuple(ids), listener_order=tuple(ids))
    async with httpx.AsyncClient(base_url=server.url) as c:
        r = await c.post(
            "/api/admin/games",
            json={"config": config.model_dump(mode="json"), "listener": "human"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
    assert r.status_code == 422


# ---------------------------------------------------------------- worker ids are personal data


async def _scan_database(url: str, needles: list[str]) -> list[str]:
    """Every value of every column of every table (reflected, so new tables count too)."""
    db = Database(url)
    hits: list[str] = []
    try:
        async with db.engine.connect() as conn:
            md = MetaData()
            await conn.run_sync(md.reflect)
            assert {"participants", "games", "game_events"} <= set(md.tables)
            for table in md.sorted_tables:
                for row in (await conn.execute(table.select())).mappings():
                    for column, value in row.items():
                        if value is None:
                            continue
                        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else (
                            value if isinstance(value, str) else json.dumps(value, default=str))
                        hits += [f"{table.name}.{column}: {n}" for n in needles if n.lower() in text.lower()]
    finally:
        await db.close()
    return hits


async def test_worker_ids_are_never_stored_raw(start_server, database_url):
    server = start_server(database_url)
    tag = uuid.uuid4().hex[:8].upper()
    prolific = [f"PPID{tag}A1", f"PPID{tag}B2"]
    mturk = [f"AWKR{tag}C3", f"AWKR{tag}D4"]
    arrivals = [{"PROLIFIC_PID": p, "STUDY_ID": "study-1", "SESSION_ID": f"sess-{i}"} for i, p in enumerate(prolific)]
    arrivals += [{"workerId": w, "assignmentId": f"asg-{i}", "hitId": "hit-1"} for i, w in enumerate(mturk)]
    tokens = [await join(server.url, p) for p in arrivals]
    # a returning worker is recognised (through the hash) and resumes
    again = await join(server.url, arrivals[0])
    bots = [await BotClient(server.url, t).connect() for t in tokens + [again]]
    views = [await b.wait_for(lambda b: b.view, 20) for b in bots[:4]]
    assert len({v.game_id for v in views}) == 2
    by_game: dict[str, dict[str, BotClient]] = {}
    for b, v in zip(bots, views):
        by_game.setdefault(v.game_id, {})[v.seat] = b
    await asyncio.gather(*(
        asyncio.gather(play_speaker(seats["speaker"]), play_listener(seats["listener"])) for seats in by_game.values()
    ))
    for b in bots:
        await b.close()
    # the game limit is counted through the hash too
    assert await _scan_database(server.database_url, prolific + mturk) == []
    async with httpx.AsyncClient(base_url=server.url) as c:
        participant = (await c.get("/api/participant", headers={"Authorization": f"Bearer {tokens[0]}"})).json()
    assert not any(w in json.dumps(participant) for w in prolific + mturk)


async def test_worker_ids_stay_out_of_the_server_log(start_server, sqlite_url):
    server = start_server(sqlite_url, args=("--log-level", "info"))
    worker = f"PPIDLOG{uuid.uuid4().hex[:10].upper()}"
    async with httpx.AsyncClient(base_url=server.url) as c:
        assert (await c.get("/", params={"PROLIFIC_PID": worker, "STUDY_ID": "s", "SESSION_ID": "1"})).status_code == 200
    await join(server.url, {"PROLIFIC_PID": worker, "STUDY_ID": "s", "SESSION_ID": "1"})
    await asyncio.sleep(0.5)
    assert worker not in server.log_path.read_text(errors="replace")
