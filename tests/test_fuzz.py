"""Fuzzing a running server: random websocket message sequences (Hypothesis) from both seats of
a game and from a stranger, and Schemathesis against the HTTP API's OpenAPI document.

Websocket sequences mix valid and invalid frames: actions with the current, a stale or a random
version, clicks on the game's tangrams, on foreign ones and on SQL-ish or path-like ids, random
and HTML text up to past the length bound, hellos with the own, the partner's, a forged or a
garbage token, malformed and oversized JSON, and reconnections. After every step the sender
pings and waits for its pong (frames are handled in order), checking every frame it got:

- the server answers (no crash), closes a connection only for a reason (bad hello, frame
  over the websocket limit), never with an internal error;
- a seat only ever sees its own game, from its own seat; a stranger sees no game;
- selection ⊆ context in every state frame, and versions never go back on a connection.

At the end of the module: /healthz is 200, the server log has no unhandled exception, and the
consistency checker finds zero mismatches in every game the fuzzer played.

CI mode: ``pytest tests/test_fuzz.py`` (``MULTIREF_FUZZ_EXAMPLES``, default 100 sequences;
Schemathesis ``MULTIREF_FUZZ_API_EXAMPLES`` per operation and data mode, default 25; about 35 s
together). The websocket part writes what it played to ``test-artifacts/fuzz-summary.txt``.
Long mode (10,000 sequences and 500 cases per operation; about 30 min on 2 cores; ``make fuzz-long``)::

    MULTIREF_FUZZ_EXAMPLES=10000 MULTIREF_FUZZ_API_EXAMPLES=500 .venv/bin/python -m pytest tests/test_fuzz.py -p no:cacheprovider

The server runs on PostgreSQL when the test server answers (the stricter database), else SQLite
(``MULTIREF_FUZZ_DB=sqlite`` forces it). Both the HTTP and the websocket fuzzing send NUL
characters; the websocket fuzzing sends binary frames too.

Bugs this module found and pins (fixed during issue 7): NUL characters (study parameters, admin
and operator input) and over-long study parameters answered 500 on PostgreSQL, NUL in utterances and binary frames crashed the websocket
handler, operator integers past INTEGER's range answered 500, refused first frames ended without
a close frame.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.bot import create_game, join, ws_url
from app.web.auth import ParticipantTokens
from tests.conftest import ADMIN_TOKEN, ROOT, ServerProcess, _pg_available
from tests.test_faults import check_all, game_config

EXAMPLES = int(os.environ.get("MULTIREF_FUZZ_EXAMPLES", "100"))
SUMMARY = ROOT / "test-artifacts" / "fuzz-summary.txt"
API_EXAMPLES = int(os.environ.get("MULTIREF_FUZZ_API_EXAMPLES", "25"))
SECRET = "fuzz-secret-key"
ACCEPTABLE_CLOSE = {1000, 1003, 1008, 1009}  # refused hello, binary frame, policy, frame too big


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, kilogram_dir, request):
    """One server for the whole module, with per-connection rate limits out of the fuzzer's way."""
    tmp = tmp_path_factory.mktemp("fuzz")
    use_pg = os.environ.get("MULTIREF_FUZZ_DB", "postgres") == "postgres" and _pg_available()
    if use_pg:
        url = request.getfixturevalue("pg_databases").new()
    else:
        url = f"sqlite+aiosqlite:///{tmp / 'fuzz.sqlite3'}"
    server = ServerProcess(
        url, kilogram_dir, tmp,
        MULTIREF_SECRET_KEY=SECRET,
        MULTIREF_MAX_MESSAGES_PER_SECOND="100000",
        MULTIREF_RULES__DISCONNECT_GRACE_SECONDS="600",
    ).start()
    server.fuzz_games = []  # game ids played, checked at the end
    yield server
    try:
        alive = server.proc.poll() is None
        log = server.log_path.read_text(errors="replace")
    finally:
        server.stop()
    assert alive, "the server process died during fuzzing"
    crashes = re.findall(r"Exception in ASGI application|Traceback \(most recent call last\)", log)
    assert not crashes, f"unhandled exceptions in the server log:\n{log[-6000:]}"


# ---------------------------------------------------------------- the websocket fuzzer

ACTORS = ("speaker", "listener", "stranger")
NASTY_IDS = [
    "'; DROP TABLE games; --", "../../etc/passwd", "..\\..\\boot.ini", "%2e%2e%2f", "page1-1\n",
    "<img src=x onerror=alert(1)>", "", " ", "A", "null", "🙂" * 50, "x" * 200,
]
NASTY_TEXT = [
    "<script>alert(1)</script>", "select A B", "deselect C select G", "   ", "\t\n", "' OR 1=1 --",
    "&amp;&lt;", "\u202eevil", "🙂" * 100, "x" * 500, "y" * 501,
]
MALFORMED = [
    "", "{", "}", "[]", "null", "0", "\"hello\"", "{\"type\":}", "{\"type\":\"click\"",
    "{\"type\":null}", "{\"type\":42}", "{\"type\":\"nope\"}", "{\"type\":[\"click\"]}",
    "{\"type\":\"click\",\"version\":\"x\",\"tangram_id\":1}", "{\"type\":\"submit\",\"version\":1e400}",
    "{\"type\":\"ping\",\"nonce\":{\"a\":1}}", "{\"type\":\"hello\"}", "{\"type\":\"hello\",\"token\":null}",
    "{\"type\":\"ping\",\"type\":\"leave\"}", "[" * 3000 + "]" * 3000, "{\"a\":" * 500 + "1" + "}" * 500,
    "{\"type\":\"ping\",\"nonce\":\"\\ud800\"}", "{\"type\":\"send_utterance\",\"version\":1,\"text\":\"\\udfff\"}",
]

no_nul = st.characters(blacklist_categories=("Cs",))  # NUL included (surrogates cannot be sent)
texts = st.one_of(st.text(no_nul, max_size=120), st.text(no_nul, min_size=480, max_size=520), st.sampled_from(NASTY_TEXT))
versions = st.one_of(
    st.sampled_from(["current", "current", "current", "stale", "next"]),
    st.integers(-5, 60),
    st.sampled_from([-(2**63), 2**63, 10**30, 0]),
    st.sampled_from(["1", 1.5, None, True, [], {}]),  # wrong JSON types
)
tangrams = st.one_of(
    st.sampled_from(["context", "context", "context", "target", "foreign"]),
    st.sampled_from(NASTY_IDS),
    st.text(no_nul, max_size=30),
)
extra_fields = st.one_of(
    st.none(), st.none(), st.none(),
    st.dictionaries(st.sampled_from(["seat", "game_id", "x", "version"]), st.integers(), min_size=1, max_size=2),
)

action = st.one_of(
    st.tuples(st.just("send_utterance"), versions, texts, extra_fields),
    st.tuples(st.just("click"), versions, tangrams, extra_fields),
    st.tuples(st.just("click"), versions, tangrams, extra_fields),
    st.tuples(st.just("submit"), versions, st.none(), extra_fields),
    st.tuples(st.just("draft"), st.none(), texts, extra_fields),
    st.tuples(st.just("ping"), st.none(), st.text(no_nul, max_size=120), extra_fields),
    st.tuples(st.just("hello"), st.none(), st.sampled_from(["own", "partner", "stranger", "forged", "tampered", "garbage"]), extra_fields),
    # leave is rare (1 in 8 of its draws, a submit otherwise): most sequences get deep into a game
    st.sampled_from([True] + [False] * 7).map(
        lambda leave: ("leave", None, None, None) if leave else ("submit", "current", None, None)
    ),
    st.tuples(st.just("first"), st.none(), st.sampled_from(["forged", "tampered", "garbage", "ping", "raw", "empty"]), st.none()),
    st.tuples(st.just("raw"), st.none(), st.one_of(st.sampled_from(MALFORMED), st.text(no_nul, max_size=200)), st.none()),
    st.tuples(st.just("oversized"), st.none(), st.sampled_from([8193, 9000, 16000, 17000, 40000]), st.none()),
    st.tuples(st.just("reconnect"), st.none(), st.none(), st.none()),
    st.tuples(st.just("binary"), st.none(), st.binary(max_size=64), st.none()),
)
# A valid move for the actor's current view (the speaker speaks, the listener clicks one of the
# game's images or submits): two thirds of the steps, so sequences get deep into their games
# with the junk in between.
play = st.tuples(st.just("play"), st.none(), st.integers(0, 2**16), st.none())
# (flatmap, not one_of: Hypothesis flattens nested one_of branches, which would drown the moves)
move_or_junk = st.integers(0, 2).flatmap(lambda k: action if k == 0 else play)
step = st.tuples(st.sampled_from(ACTORS), move_or_junk)
sequences = st.lists(step, min_size=8, max_size=60)


@dataclass
class Conn:
    actor: str
    ws: object
    frames: list[dict] = field(default_factory=list)
    last_version: int = 0
    view: dict | None = None
    closed: str | None = None


class Violation(AssertionError):
    pass


class Session:
    """One example: a fresh game, its two seats and a stranger, driven by one sequence."""

    def __init__(self, base_url: str, created: dict, stranger_token: str, config) -> None:
        self.base_url = base_url
        self.created = created
        self.config = config
        self.context = set(config.context)
        self.tokens = {
            "speaker": created["speaker_token"],
            "listener": created["listener_token"],
            "stranger": stranger_token,
        }
        self.conns: dict[str, Conn] = {}
        self.foreign = "page9-999"  # not in the set at all

    async def conn(self, actor: str) -> Conn:
        c = self.conns.get(actor)
        if c is None or c.closed:
            ws = await websockets.connect(ws_url(self.base_url), max_size=2**22, open_timeout=10)
            c = Conn(actor, ws)
            self.conns[actor] = c
            await ws.send(json.dumps({"type": "hello", "token": self.tokens[actor]}))
            await self.sync(c)
        return c

    # ------------------------------------------------------------ checks on every frame

    def check(self, c: Conn, frame: dict) -> None:
        kind = frame.get("type")
        if kind not in ("welcome", "lobby", "state", "released", "error", "pong"):
            raise Violation(f"unknown frame type from the server: {frame}")
        if kind != "state":
            return
        view = frame["view"]
        if c.actor == "stranger":
            raise Violation(f"a stranger was shown a game: {view['game_id']}")
        if view["game_id"] != self.created["game_id"] or view["seat"] != c.actor:
            raise Violation(f"{c.actor} was shown {view['seat']} of {view['game_id']}")
        ids = [t["tangram_id"] for t in view["tiles"]]
        if set(ids) != self.context or len(ids) != len(self.context):
            raise Violation(f"tiles are not the context: {ids}")
        selected = {t["tangram_id"] for t in view["tiles"] if t["selected"]}
        if not selected <= self.context:
            raise Violation(f"selection {selected} is not in the context")
        hidden = view["seat"] == "listener" and view["phase"] != "ended"
        if hidden and any(t["target"] is not None for t in view["tiles"]):
            raise Violation("the listener was shown the targets")
        if view["version"] < c.last_version:
            raise Violation(f"version went back on a connection: {c.last_version} -> {view['version']}")
        c.last_version = view["version"]
        c.view = view

    async def sync(self, c: Conn, timeout: float = 10.0) -> None:
        """Ping and read up to the pong: everything sent before it has been handled."""
        nonce = uuid.uuid4().hex[:16]
        try:
            await c.ws.send(json.dumps({"type": "ping", "nonce": nonce}))
            while True:
                frame = json.loads(await asyncio.wait_for(c.ws.recv(), timeout))
                c.frames.append(frame)
                self.check(c, frame)
                if frame.get("type") == "pong" and frame.get("nonce") == nonce:
                    return
        except websockets.ConnectionClosed as exc:
            self.closed(c, exc)
        except TimeoutError as exc:
            raise Violation(f"the server stopped answering {c.actor} (no pong in {timeout}s)") from exc

    def closed(self, c: Conn, exc: websockets.ConnectionClosed) -> None:
        code = exc.rcvd.code if exc.rcvd else None
        last_error = next((f.get("code") for f in reversed(c.frames) if f.get("type") == "error"), None)
        c.closed = f"{code} after {last_error}"
        if code not in ACCEPTABLE_CLOSE:
            raise Violation(f"{c.actor}'s connection was dropped with {code} (last error {last_error}): a server-side crash")

    # ------------------------------------------------------------ frames

    def version(self, c: Conn, choice):
        if choice == "current":
            return c.last_version
        if choice == "stale":
            return max(0, c.last_version - 1)
        if choice == "next":
            return c.last_version + 1
        return choice

    def tangram(self, choice) -> str:
        if choice == "context":
            return sorted(self.context)[hash(str(self.created["game_id"])) % len(self.context)]
        if choice == "target":
            return self.config.targets[0]
        if choice == "foreign":
            return self.foreign
        return choice

    def token(self, which: str) -> str:
        own = self.tokens
        return {
            "own": None,
            "partner": own["listener"],
            "stranger": own["stranger"],
            "forged": ParticipantTokens("not-the-secret").issue("p" * 32),
            "tampered": own["speaker"][:-3] + "xyz",
            "garbage": "🙂 ' OR 1=1",
        }[which]

    async def first_frame(self, which: str) -> None:
        """A new connection whose first frame is not a valid hello: refused, then closed."""
        raw = {"ping": json.dumps({"type": "ping", "nonce": "x"}), "raw": "{\"type\":", "empty": ""}
        first = raw[which] if which in raw else json.dumps({"type": "hello", "token": self.token(which)})
        c = Conn("stranger", await websockets.connect(ws_url(self.base_url), open_timeout=10))
        await c.ws.send(first)
        try:
            while True:
                frame = json.loads(await asyncio.wait_for(c.ws.recv(), 10))
                c.frames.append(frame)
                self.check(c, frame)
                if frame.get("type") in ("welcome", "lobby", "pong"):
                    raise Violation(f"a connection without a valid hello got {frame}")
        except websockets.ConnectionClosed as exc:
            self.closed(c, exc)
        except TimeoutError as exc:
            raise Violation("a connection without a valid hello was left open") from exc

    async def run(self, actor: str, act) -> None:
        kind, version, arg, extra = act
        if kind == "first":
            await self.first_frame(arg)
            return
        c = await self.conn(actor)
        if kind == "reconnect":
            await c.ws.close()
            c.closed = "reconnect"
            await self.conn(actor)
            return
        if kind in ("play", "send_utterance", "click", "submit"):
            await self.sync(c)  # read what the partner's moves brought first: the current version
            if c.closed:
                return
        if kind == "play":
            kind, version, arg, extra = self.move(c, arg)
        if kind == "raw":
            payload: str | bytes = arg
        elif kind == "binary":
            payload = arg
        elif kind == "oversized":
            payload = json.dumps({"type": "ping", "nonce": "o", "pad": "z" * arg})
        else:
            frame: dict = {"type": kind}
            if kind in ("send_utterance", "click", "submit"):
                frame["version"] = self.version(c, version)
            if kind in ("send_utterance", "draft"):
                frame["text"] = arg
            elif kind == "click":
                frame["tangram_id"] = self.tangram(arg)
            elif kind == "ping":
                frame["nonce"] = arg
            elif kind == "hello":
                frame["token"] = self.token(arg) or self.tokens[actor]
            frame.update(extra or {})
            payload = json.dumps(frame)
        try:
            await c.ws.send(payload)
        except websockets.ConnectionClosed as exc:
            self.closed(c, exc)
            return
        await self.sync(c)

    def move(self, c: Conn, n: int):
        """A move that is valid in ``c``'s current view (or at least well formed)."""
        ids = sorted(self.context)
        if c.actor == "speaker":
            words = " ".join(ids[(n + k) % len(ids)] for k in range(1 + n % 3))
            return ("send_utterance", "current", f"select {words}", None)
        if c.actor == "listener" and c.view and c.view["phase"] == "selecting":
            # mostly towards the targets (so games also end in success), sometimes anywhere
            selected = {t["tangram_id"] for t in c.view["tiles"] if t["selected"]}
            todo = sorted(selected ^ set(self.config.targets))
            if not todo or n % 5 == 0:
                return ("submit", "current", None, None)
            if n % 3:
                return ("click", "current", todo[0], None)
        return ("click", "current", ids[n % len(ids)], None)

    async def close(self) -> None:
        for c in self.conns.values():
            if not c.closed:
                await c.ws.close()


async def play_sequence(server: ServerProcess, steps, seed: int) -> None:
    config = game_config(Path(server.tangrams), 3 + seed % 3, seed=seed)
    created = await create_game(server.url, ADMIN_TOKEN, config)
    server.fuzz_games.append(created["game_id"])
    stranger = await join(server.url, consent=False)
    session = Session(server.url, created, stranger, config)
    try:
        for seat in ("speaker", "listener"):  # both seated: the game starts, steps play in it
            await session.conn(seat)
        for actor, act in steps:
            await session.run(actor, act)
    finally:
        await session.close()


def test_random_message_sequences_keep_the_server_sound(fuzz_server):
    ran = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(steps=sequences, seed=st.integers(0, 2**16))
    def one(steps, seed):
        ran["sequences"] += 1
        ran["steps"] += len(steps)
        asyncio.run(play_sequence(fuzz_server, steps, seed))
        assert fuzz_server.proc.poll() is None, "the server process died"

    one()
    assert httpx.get(fuzz_server.url + "/healthz", timeout=5).status_code == 200
    assert len(fuzz_server.fuzz_games) >= min(EXAMPLES, 10)
    asyncio.run(check_all(fuzz_server.database_url))
    # the fuzzer got into the games, not only past their doors
    kinds = asyncio.run(_event_types(fuzz_server.database_url, fuzz_server.fuzz_games))
    summary = (
        f"websocket fuzzing: {ran['sequences']} sequences, {ran['steps']} steps, "
        f"{len(fuzz_server.fuzz_games)} games, events by type {dict(sorted(kinds.items()))}"
    )
    print(summary)  # shown with -s; kept for the long mode's report:
    SUMMARY.parent.mkdir(parents=True, exist_ok=True)
    SUMMARY.write_text(summary + "\n")
    if EXAMPLES >= 50:
        assert {"utterance_sent", "selection_toggled", "selection_submitted", "game_ended"} <= set(kinds), kinds


async def _event_types(url: str, game_ids: list[str]) -> Counter:
    from sqlalchemy import func, select

    from app.db.database import Database
    from app.db.models import GameEvent

    db = Database(url)
    try:
        async with db.session() as s:
            rows = await s.execute(
                select(GameEvent.type, func.count()).where(GameEvent.game_id.in_(game_ids)).group_by(GameEvent.type)
            )
            return Counter(dict(rows.all()))
    finally:
        await db.close()


def test_a_long_valid_game_is_still_sound_after_the_fuzzing(fuzz_server):
    """After all the garbage, the server still plays a game to the end, correctly."""
    from app.bot import play_pair

    config = game_config(Path(fuzz_server.tangrams), 5, seed=99)

    async def run():
        created = await create_game(fuzz_server.url, ADMIN_TOKEN, config)
        result = await play_pair(fuzz_server.url, created["speaker_token"], created["listener_token"], mistakes=2)
        assert result.outcome == "successful" and all(result.completion_codes)
        await check_all(fuzz_server.database_url)

    asyncio.run(run())


# ---------------------------------------------------------------- inputs that hit bugs (pinned)


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory, kilogram_dir, pg_databases) -> ServerProcess:
    """One default PostgreSQL server for the pinned-input tests below (each sends its own bad
    input and checks its own answers; a crash in any of them is in the shared log)."""
    tmp = tmp_path_factory.mktemp("fuzz-pg")
    server = ServerProcess(pg_databases.new(), kilogram_dir, tmp).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory, kilogram_dir) -> ServerProcess:
    """One default SQLite server for the websocket-framing tests below."""
    tmp = tmp_path_factory.mktemp("fuzz-sqlite")
    server = ServerProcess(f"sqlite+aiosqlite:///{tmp / 'multiref.sqlite3'}", kilogram_dir, tmp).start()
    yield server
    server.stop()


async def _status(request) -> int:
    """The status of a request; 599 when the server dropped the connection instead of answering."""
    try:
        return (await request).status_code
    except httpx.TransportError:
        return 599


def _crashes(server: ServerProcess) -> list[str]:
    return re.findall(r"Exception in ASGI application", server.log_path.read_text(errors="replace"))


async def test_join_with_nul_or_over_long_study_params_is_refused_cleanly(pg_server):
    cases = [
        {"PROLIFIC_PID": "a", "STUDY_ID": "s\x00", "SESSION_ID": "1"},
        {"PROLIFIC_PID": "w1", "STUDY_ID": "s" * 200, "SESSION_ID": "1"},
        {"workerId": "w2", "assignmentId": "a" * 129, "hitId": "h"},
        {"worker": "w3", "platform": "p" * 17},
    ]
    async with httpx.AsyncClient(base_url=pg_server.url) as c:
        statuses = [await _status(c.post("/api/join", json={"params": p})) for p in cases]
    assert all(s < 500 for s in statuses), statuses


async def test_nul_characters_in_utterances_get_an_error_frame(pg_server, kilogram_dir):
    from tests.test_security import started_game

    created, speaker, listener, view = await started_game(pg_server.url, kilogram_dir, seed=3)
    await speaker.send({"type": "draft", "text": "a\x00b"})
    await speaker.send({"type": "send_utterance", "version": view["version"], "text": "a\x00b"})
    try:
        await speaker.settle()  # raises if the server dropped the connection
    finally:
        await listener.close()
    # both frames were answered with an error frame naming the field, and nothing was sent
    nul_errors = [f for f in speaker.frames if f.get("type") == "error"]
    assert [f["code"] for f in nul_errors] == ["invalid_frame", "invalid_frame"], nul_errors
    assert all("text" in f["message"] for f in nul_errors)
    assert not any(f.get("type") == "state" and f["view"]["messages"] for f in speaker.frames)
    assert _crashes(pg_server) == []


async def test_binary_frames_get_an_error_not_a_crash(sqlite_server):
    server = sqlite_server
    token = await join(server.url)
    async with websockets.connect(ws_url(server.url)) as ws:
        await ws.send(json.dumps({"type": "hello", "token": token}))
        await ws.send(b'{"type": "ping", "nonce": "b"}')
        await ws.send(json.dumps({"type": "ping", "nonce": "after"}))
        frames = []
        try:
            while True:
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
                if frames[-1].get("nonce") == "after":
                    break
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None and exc.rcvd.code == 1003, f"dropped: {exc!r}"
    errors = [f for f in frames if f.get("type") == "error"]
    assert [f["code"] for f in errors] == ["binary_frame"], frames
    assert frames[-1] == {"type": "pong", "nonce": "after", "server_time": frames[-1]["server_time"]}
    assert _crashes(server) == []


async def test_operator_integers_beyond_the_columns_are_refused_cleanly(pg_server):
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    big = 2**31
    async with httpx.AsyncClient(base_url=pg_server.url, headers=auth) as c:
        assert (await c.post("/api/operator/systems", json={"name": "fuzz-sys", "kind": "model"})).status_code < 300
        statuses = [
            await _status(c.post("/api/operator/rounds", json={"number": big})),
            await _status(c.post("/api/operator/deploy", json={"system": "fuzz-sys", "round": big, "allow_missing_adapter": True})),
            await _status(c.post("/api/operator/systems/fuzz-sys/quota", json={"quota": big})),
        ]
        assert all(s < 500 for s in statuses), statuses
        # the largest round there can be, then "the next round" (found by the long fuzzing run)
        assert (await c.post("/api/operator/rounds", json={"number": big - 1})).status_code == 200
        after = await c.post("/api/operator/rounds", json={"note": "the next one"})
        assert after.status_code == 409 and "round numbers go from 0 to" in after.json()["detail"]
    assert _crashes(pg_server) == []


async def test_nul_characters_in_admin_and_operator_input_are_refused_cleanly(pg_server):
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=pg_server.url, headers=auth) as c:
        statuses = [
            await _status(c.post("/api/admin/games", json={"listener": "model", "system": "a\x00b"})),
            await _status(c.get("/api/operator/checkpoints", params={"system": "a\x00b"})),
            await _status(c.get("/api/admin/games", params={"status": "l\x00"})),
            await _status(c.post("/api/operator/systems", json={"name": "a\x00b", "kind": "model"})),
            await _status(c.post("/api/operator/rounds", json={"number": 5, "note": "x\x00"})),
        ]
    assert all(s < 500 for s in statuses), statuses


async def test_a_refused_first_frame_is_followed_by_a_close_frame(sqlite_server):
    server = sqlite_server
    codes = []
    for first in ({"type": "hello", "token": "garbage"}, {"type": "ping", "nonce": "x"}):
        async with websockets.connect(ws_url(server.url)) as ws:
            await ws.send(json.dumps(first))
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            except websockets.ConnectionClosed as exc:
                codes.append(exc.rcvd.code if exc.rcvd else None)
    assert codes == [1008, 1008]


# ---------------------------------------------------------------- Schemathesis on the HTTP API

try:
    import schemathesis
    from schemathesis.checks import not_a_server_error
except ImportError:  # pragma: no cover - the test extra installs it
    schemathesis = None


def _call_every_way(case, fuzz_server) -> None:
    """The case as generated (random or no Authorization), then with the admin bearer token on
    admin and operator routes, or a valid participant token elsewhere: never a 5xx."""
    response = case.call(base_url=fuzz_server.url, timeout=15)
    case.validate_response(response, checks=[not_a_server_error])
    if case.path.startswith(("/api/admin", "/api/operator")):
        authorized = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    else:
        token = getattr(fuzz_server, "participant_token", None)
        if token is None:
            token = httpx.post(fuzz_server.url + "/api/join", json={"params": {}}, timeout=10).json()["token"]
            fuzz_server.participant_token = token
        authorized = {"Authorization": f"Bearer {token}"}
    response = case.call(base_url=fuzz_server.url, headers=authorized, timeout=15)
    case.validate_response(response, checks=[not_a_server_error])
    assert fuzz_server.proc.poll() is None


def test_http_api_never_answers_500(fuzz_server):
    """Schemathesis over every operation of /openapi.json (admin and operator routes included),
    positive and negative data, each case called as generated and then authorized. The
    schemathesis pytest plugin does not run under pytest 9 yet, so operations are driven here
    with Hypothesis directly."""
    if schemathesis is None:  # pragma: no cover
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    from hypothesis.errors import Unsatisfiable

    config = schemathesis.Config.from_dict(
        {
            "base-url": fuzz_server.url,
            "generation": {"allow-x00": True, "max-examples": API_EXAMPLES},
        }
    )
    api = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json", config=config)
    failures: list[str] = []
    tested: list[str] = []
    for result in api.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @settings(max_examples=API_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case):
                _call_every_way(case, fuzz_server)

            try:
                run()
            except Unsatisfiable:
                continue  # e.g. no invalid data exists for an operation without parameters
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - all reported below
                failures.append(f"{operation.label} [{mode.value}]: {type(exc).__name__}: {str(exc)[:1500]}")
            tested.append(f"{operation.label} [{mode.value}]")
    assert {"POST /api/join", "POST /api/admin/games"} <= {t.split(" [")[0] for t in tested}, tested
    assert failures == [], "\n\n".join(failures)
    assert httpx.get(fuzz_server.url + "/healthz", timeout=5).status_code == 200
