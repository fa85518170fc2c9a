"""Fault injection with real processes: the deployment topology (two server replicas behind a
proxy, as in docker-compose.yml) under a server killed with SIGKILL, a policy worker killed while
it holds a claim, PostgreSQL restarted mid-game, and client connections cut at random points.

After every scenario the database is checked: every game rebuilt from its event log equals its
derived rows (``app.db.checker``), event sequences are consecutive, no action was applied twice,
and every view a client was shown is a prefix of the final log (no committed event was lost).
Each test is bounded in time; run just these with ``pytest tests/test_faults.py``.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from app.bot import BotClient, create_game, join, play_resilient
from app.db.checker import check_games
from app.db.database import Database
from app.db.gamelog import load_events
from app.db.models import GameEvent, ListenerRequest, WorkerHeartbeat
from app.game.rules import GameConfig, replay
from app.live.bus import LISTEN_NAME
from app.processes import WorkerProcess
from tests.conftest import ADMIN_TOKEN, ROOT, require
from tests.pgcluster import private_pg  # noqa: F401 - fixture
from tests.proxy import Proxy

# Long enough that no deadline fires while a client is reconnecting; games end by play.
FAULT_ENV = {
    "MULTIREF_RULES__DISCONNECT_GRACE_SECONDS": "90",
    "MULTIREF_RULES__TURN_SECONDS": "90",
    "MULTIREF_RULES__SPEAKER_SECONDS": "60",
}


def game_config(kilogram_dir: Path, n_targets: int = 5, seed: int = 0) -> GameConfig:
    rng = random.Random(seed)
    ids = sorted(p.stem for p in kilogram_dir.glob("*.svg"))
    context = rng.sample(ids, 10)
    return GameConfig(
        context=tuple(sorted(context)),
        targets=tuple(sorted(rng.sample(context, n_targets))),
        speaker_order=tuple(rng.sample(context, 10)),
        listener_order=tuple(rng.sample(context, 10)),
    )


# ---------------------------------------------------------------- what every scenario checks


@dataclass
class Seen:
    """Every view a client was shown (version, phase, turn, selection, messages)."""

    views: list[tuple] = field(default_factory=list)

    def record(self, view, _at) -> None:
        self.views.append(
            (
                view.game_id,
                view.version,
                view.phase,
                view.turn,
                frozenset(t.tangram_id for t in view.tiles if t.selected),
                tuple(m.text for m in view.messages),
            )
        )


def watch(bot: BotClient) -> Seen:
    seen = Seen()
    bot.on_state = seen.record
    return seen


async def game_log(url: str, game_id: str):
    db = Database(url)
    try:
        async with db.session() as s:
            rows = (
                await s.execute(
                    select(GameEvent.seq, GameEvent.type).where(GameEvent.game_id == game_id).order_by(GameEvent.seq)
                )
            ).all()
            events = await load_events(s, game_id)
        return rows, events
    finally:
        await db.close()


async def check_all(url: str) -> int:
    """The consistency checker over the whole database: zero mismatches; returns games checked."""
    db = Database(url)
    try:
        report = await check_games(db)
    finally:
        await db.close()
    assert report.mismatches == [], report.mismatches
    assert report.games > 0
    return report.games


async def assert_log_sound(
    url: str, game_id: str, bots: list[BotClient] = (), seen: list[Seen] = (), *, ended: bool = True
) -> list:
    """The invariants of one game's log after a fault; returns its events."""
    rows, events = await game_log(url, game_id)
    assert [seq for seq, _ in rows] == list(range(1, len(rows) + 1)), "event seqs are not consecutive"
    types = Counter(t for _, t in rows)
    per_turn = Counter((e.type, getattr(e, "turn", None)) for e in events)
    assert types["game_created"] == 1
    # one message and one submission per turn at most: nothing decided twice
    assert all(n == 1 for (t, _), n in per_turn.items() if t in ("utterance_sent", "selection_submitted", "turn_started"))
    turns = [e.turn for e in events if e.type == "turn_started"]
    assert turns == list(range(1, len(turns) + 1))
    if ended:
        assert types["game_ended"] == 1 and rows[-1][1] == "game_ended", "the game did not end exactly once, last"
    # each action a client sent was applied at most once
    sent = Counter()
    for b in bots:
        sent.update(b.sent)
    if bots:
        assert types["selection_toggled"] <= sent["click"], (types, sent)
        manual_utterances = sum(1 for e in events if e.type == "utterance_sent" and not e.auto)
        manual_submits = sum(1 for e in events if e.type == "selection_submitted" and not e.auto)
        assert manual_utterances <= sent["send_utterance"] and manual_submits <= sent["submit"], (types, sent)
    # every view shown to a client is the log's state at that version: nothing committed was lost
    for record in seen:
        for gid, version, phase, turn, selection, messages in record.views:
            if gid != game_id:
                continue
            assert version <= len(events), f"a client saw version {version}, the log has {len(events)}"
            state = replay(events[:version])
            assert (phase, turn, selection, messages) == (
                state.phase.value, state.turn, frozenset(state.selection), tuple(m.text for m in state.messages)
            ), f"view at version {version} differs from the log"
    return events


def describe(bots: list[BotClient]) -> str:
    """What each bot knows, for failure messages."""
    return "\n".join(
        f"{b.view.seat if b.view else '?'}: v{b.view.version if b.view else '-'} "
        f"{b.view.phase if b.view else '-'} turn {b.view.turn if b.view else '-'} "
        f"submitted={b.view.turn_submitted if b.view else '-'} connected={b.connected} fresh={b._fresh} "
        f"drops={b.drops} reconnects={b.reconnects} resyncs={b.resyncs} gave_up={b.gave_up} "
        f"sent={dict(b.sent)} errors={[(e.code, e.version) for e in b.errors[-5:]]} "
        f"reader_done={b._reader.done() if b._reader else None}"
        for b in bots
    )


async def finish(plays, bots: list[BotClient], timeout: float):
    """Wait for the bots' games to end; on a timeout, say what each bot knew."""
    try:
        return await asyncio.wait_for(asyncio.gather(*plays), timeout)
    except Exception as exc:
        raise AssertionError(f"games did not finish: {exc!r}\n{describe(bots)}") from exc


async def connect_seats(base_url: str, created: dict, reconnect: bool = True) -> tuple[BotClient, BotClient]:
    speaker = await BotClient(base_url, created["speaker_token"], reconnect=reconnect).connect()
    listener = await BotClient(base_url, created["listener_token"], reconnect=reconnect).connect()
    await speaker.wait_for(lambda b: b.view is not None, 20)
    await listener.wait_for(lambda b: b.view is not None, 20)
    return speaker, listener


# ---------------------------------------------------------------- deployment topology


def test_compose_file_describes_the_deployment():
    import yaml  # a declared test dependency (pyproject: test extra)

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    webs = [name for name, svc in services.items() if "serve" in str(svc.get("command", ""))]
    assert len(webs) >= 2, "two or more server replicas"
    assert {"postgres", "nginx", "worker"} <= set(services)
    for name in webs:
        env = services[name]["environment"]
        assert env["MULTIREF_DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert env["MULTIREF_HOST"] == "0.0.0.0"
        assert "/healthz" in " ".join(map(str, services[name]["healthcheck"]["test"]))
    worker = services["worker"]
    assert "worker" in str(worker["command"])
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "healthcheck" in services["postgres"]
    # every secret comes from the environment, none is written in the file
    text = (ROOT / "docker-compose.yml").read_text()
    assert re.search(r"MULTIREF_SECRET_KEY:\s*\$\{MULTIREF_SECRET_KEY", text)
    assert re.search(r"MULTIREF_ADMIN_TOKEN:\s*\$\{MULTIREF_ADMIN_TOKEN", text)
    example = (ROOT / "deploy" / "env.example").read_text()
    for var in ("MULTIREF_SECRET_KEY", "MULTIREF_ADMIN_TOKEN", "POSTGRES_PASSWORD"):
        assert re.search(rf"^{var}=", example, re.M), var
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile and "ARG TORCH" in dockerfile
    # every MULTIREF_ variable named in the compose file or the example is a real setting
    from app.settings import Settings

    fields = set(Settings.model_fields)
    named = set(re.findall(r"\b(MULTIREF_[A-Z0-9_]+)", text + example))
    unknown = {v for v in named if v[len("MULTIREF_"):].lower().split("__")[0] not in fields}
    assert unknown <= {"MULTIREF_DOMAIN"}, unknown  # the Caddyfile's, not the server's
    # a variable left empty in .env must not turn a path setting into "." (pydantic reads "" as Path("."))
    empty = {v: "" for v in re.findall(r"\$\{(MULTIREF_[A-Z0-9_]+):-\}", text)}
    with pytest.MonkeyPatch.context() as mp:
        for v in empty:
            mp.setenv(v, "")
        settings = Settings(_env_file=None)
    assert not [v for v in empty if isinstance(getattr(settings, v[len("MULTIREF_"):].lower()), Path)]
    # nginx's upstream lists exactly the web replicas of the compose file
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    upstream = re.search(r"upstream\s+\w+\s*\{([^}]*)\}", conf).group(1)
    assert sorted(re.findall(r"^\s*server\s+([\w-]+):8000", upstream, re.M)) == sorted(webs)


def test_nginx_config_upgrades_websockets_to_every_replica():
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    assert re.search(r"map\s+\$http_upgrade\s+\$connection_upgrade", conf)
    assert "proxy_http_version 1.1;" in conf
    assert re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade;", conf)
    assert re.search(r"proxy_set_header\s+Connection\s+\$connection_upgrade;", conf)
    timeout = re.search(r"proxy_read_timeout\s+(\d+)s?;", conf)
    assert timeout and int(timeout.group(1)) >= 600, "a long read timeout for idle websockets"
    upstream = re.search(r"upstream\s+\w+\s*\{([^}]*)\}", conf).group(1)
    assert len(re.findall(r"^\s*server\s+\S+", upstream, re.M)) >= 2
    # the client address is set, not appended: a client cannot spoof it through the proxy
    assert re.search(r"proxy_set_header\s+X-Forwarded-For\s+\$remote_addr;", conf)
    # access logs leave out query strings (study links carry worker ids)
    formats = re.findall(r"log_format\s+(\w+)((?:\s+'[^']*')+)\s*;", conf)
    assert formats and all(not re.search(r"\$(request|request_uri|args|query_string)\b", f) for _, f in formats)
    assert re.search(rf"access_log\s+\S+\s+{formats[0][0]}\s*;", conf)


async def test_two_replicas_behind_the_proxy_serve_one_game(start_server, pg_url, kilogram_dir):
    """The compose topology with real processes: the seats land on different replicas."""
    servers = [start_server(pg_url, **FAULT_ENV) for _ in range(2)]
    with Proxy([s.url for s in servers]) as proxy:
        assert httpx.get(proxy.url + "/healthz").json()["status"] == "ok"
        created = await create_game(proxy.url, ADMIN_TOKEN, game_config(kilogram_dir, 4, seed=1))
        speaker, listener = await connect_seats(proxy.url, created)
        assert {proxy.backend_of(speaker.local_port), proxy.backend_of(listener.local_port)} == {0, 1}
        seen = [watch(speaker), watch(listener)]
        sv, lv = await asyncio.wait_for(asyncio.gather(play_resilient(speaker), play_resilient(listener)), 90)
        assert sv.outcome == lv.outcome == "successful"
        await speaker.close()
        await listener.close()
    await assert_log_sound(pg_url, created["game_id"], [speaker, listener], seen)
    await check_all(pg_url)


# ---------------------------------------------------------------- two writers racing on one game


async def test_a_write_conflict_still_shows_local_players_the_newer_state(tmp_path, kilogram_dir):
    """Deterministic form of a race the drop tests found: the listener acts on process A at the
    moment process B appends an event (here: B notices the speaker's connection dropped); A
    learns of B's event through the write conflict first and through the bus second, and must
    still show it to its players (before the fix their view stayed stale and every action they
    made was refused as stale_version until some later event)."""
    import json
    import uuid

    from app.db.gamelog import create_game as create_game_row, event_json
    from app.game.rules import Click, Disconnect, GameCreated, GameRules, Rejection, Seat, SendUtterance
    from app.live.bus import Bus
    from app.live.hub import Connection, GameHub

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'race.sqlite3'}")
    await db.migrate()
    here, there = GameHub(db, Bus()), GameHub(db, Bus())  # notifications are delivered by hand
    config = game_config(kilogram_dir, 3, seed=5)
    game_id = uuid.uuid4().hex
    async with db.session() as s, s.begin():
        await create_game_row(s, GameCreated(game_id=game_id, config=config, rules=GameRules(), at=time.time()))
    received: dict[str, list[dict]] = {"speaker": [], "listener": []}

    def sink(seat: str):
        async def send(text: str) -> None:
            received[seat].append(json.loads(text))
        return send

    speaker, listener = Connection(sink("speaker")), Connection(sink("listener"))
    try:
        await here.attach(speaker, game_id, Seat.SPEAKER)
        await here.attach(listener, game_id, Seat.LISTENER)
        started = await here.state(game_id)
        state, _ = await here.execute(
            game_id, SendUtterance(seat=Seat.SPEAKER, text="select it", at=time.time()), version=started.version
        )
        assert state.phase == "selecting"
        newer, events = await there.execute(game_id, Disconnect(seat=Seat.SPEAKER, at=time.time()))
        assert newer.version == state.version + 1
        _, result = await here.execute(
            game_id, Click(seat=Seat.LISTENER, tangram_id=config.context[0], at=time.time()), version=state.version
        )
        assert isinstance(result, Rejection) and result.code == "stale_version"  # nothing applied twice
        await here.on_bus({"k": "g", "id": game_id, "v": newer.version, "e": [event_json(e) for e in events]})
        await asyncio.sleep(0.1)  # the connections' writers run
        shown = [f["view"]["version"] for f in received["listener"] if f["type"] == "state"]
        assert max(shown) == newer.version, f"the listener was shown versions {shown}, the game is at {newer.version}"
    finally:
        for c in (speaker, listener):
            await c.close()
        await db.close()


# ---------------------------------------------------------------- a server killed with SIGKILL


async def test_replica_killed_mid_game_its_clients_finish_on_the_other(start_server, pg_url, kilogram_dir):
    servers = [start_server(pg_url, **FAULT_ENV) for _ in range(2)]
    with Proxy([s.url for s in servers], health_interval=0.3) as proxy:
        created = await create_game(proxy.url, ADMIN_TOKEN, game_config(kilogram_dir, 5, seed=2))
        speaker, listener = await connect_seats(proxy.url, created)
        seen = [watch(speaker), watch(listener)]
        victim = proxy.backend_of(speaker.local_port)
        survivor = 1 - victim
        play = asyncio.gather(play_resilient(speaker, 120), play_resilient(listener, 120))
        # kill the speaker's replica while the listener is busy selecting in turn 1
        await listener.wait_for(lambda b: b.view.phase == "selecting" and b.view.cause == "selection_toggled", 30)
        servers[victim].kill()
        sv, lv = await asyncio.wait_for(play, 150)
        assert sv.phase == lv.phase == "ended" and sv.outcome == "successful"
        assert speaker.reconnects >= 1 and not speaker.gave_up
        assert proxy.backend_of(speaker.local_port) == survivor
        assert proxy.healthy()[victim] is False
        await speaker.close()
        await listener.close()
    await assert_log_sound(pg_url, created["game_id"], [speaker, listener], seen)
    await check_all(pg_url)


# ---------------------------------------------------------------- client connections cut at random


@pytest.mark.parametrize("seed", [7, 2024])
async def test_connections_dropped_at_random_points_lose_nothing(start_server, pg_url, kilogram_dir, seed):
    """Seeded drops: every few frames (1 to 5, drawn from the seed) one of the two players'
    TCP connections is reset by the proxy, sometimes while an action is in flight."""
    rng = random.Random(seed)
    servers = [start_server(pg_url, **FAULT_ENV) for _ in range(2)]
    with Proxy([s.url for s in servers]) as proxy:
        created = await create_game(proxy.url, ADMIN_TOKEN, game_config(kilogram_dir, 5, seed=seed))
        speaker, listener = await connect_seats(proxy.url, created)
        seen = [watch(speaker), watch(listener)]
        bots = [speaker, listener]
        dropped = Counter()
        frames = lambda: speaker.frames + listener.frames  # noqa: E731
        over = lambda: any(b.view.phase == "ended" for b in bots)  # noqa: E731

        async def dropper() -> None:
            while not over():
                bot, target = rng.choice(bots), frames() + rng.randint(1, 5)
                while frames() < target and not over():
                    await asyncio.sleep(0.005)
                await asyncio.sleep(rng.uniform(0, 0.03))  # sometimes while an action is in flight
                port = bot.local_port
                if not over() and port is not None and proxy.drop(client_port=port):
                    dropped[bot.view.seat] += 1

        chaos = asyncio.create_task(dropper())
        sv, lv = await finish([play_resilient(b, 60, think=0.05) for b in bots], bots, 90)
        chaos.cancel()
        assert sv.phase == lv.phase == "ended" and sv.end_reason in ("success", "max_turns")
        assert sum(dropped.values()) >= 3, dropped
        assert speaker.reconnects + listener.reconnects >= sum(dropped.values())
        print(f"seed {seed}: {dict(dropped)} drops\n{describe(bots)}")  # shown with -s
        for b in bots:
            await b.close()
    await assert_log_sound(pg_url, created["game_id"], bots, seen)
    await check_all(pg_url)


# ---------------------------------------------------------------- PostgreSQL restarted mid-game


async def test_postgres_restarted_mid_game_nothing_lost_or_doubled(start_server, private_pg, kilogram_dir):
    url = private_pg.new_database()
    servers = [start_server(url, **FAULT_ENV) for _ in range(2)]
    with Proxy([s.url for s in servers]) as proxy:
        games = []
        for seed in (11, 12):
            created = await create_game(proxy.url, ADMIN_TOKEN, game_config(kilogram_dir, 5, seed=seed))
            speaker, listener = await connect_seats(proxy.url, created)
            games.append((created, speaker, listener, [watch(speaker), watch(listener)]))
        bots = [b for _, s, l, _ in games for b in (s, l)]
        play = asyncio.gather(*(play_resilient(b, 150) for b in bots))
        await games[0][2].wait_for(lambda b: b.view.phase == "selecting", 30)
        await asyncio.to_thread(private_pg.restart, 2.0)
        views = await asyncio.wait_for(play, 180)
        assert all(v.phase == "ended" for v in views)
        assert sum(b.drops for b in bots) >= 1, "clients should have seen their connections fail"
        assert all(not b.gave_up for b in bots)
        for b in bots:
            await b.close()
        assert all(s.proc.poll() is None for s in servers), "a server process died with the database"
        for s in servers:  # both replicas are healthy again, their buses reconnected
            assert wait_health(s.url, 200, 30)["status"] == "ok"
            assert "reconnected to PostgreSQL" in s.log_path.read_text(errors="replace")
    for created, speaker, listener, seen in games:
        await assert_log_sound(url, created["game_id"], [speaker, listener], seen)
    await check_all(url)


def wait_health(url: str, status_code: int, timeout: float) -> dict:
    """The body of the first /healthz answer with ``status_code`` (the games can end before a
    replica's bus has reconnected: it retries with backoff)."""
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(url + "/healthz", timeout=5)
        if r.status_code == status_code:
            return r.json()
        assert time.monotonic() < deadline, f"/healthz still {r.status_code} {r.text} after {timeout} s"
        time.sleep(0.1)


def test_a_replica_whose_bus_lost_postgres_is_unhealthy_until_it_reconnects(start_server, private_pg):
    """A replica whose LISTEN connection is gone does not hear the other replicas' moves: the
    proxy must route its players elsewhere until the bus is back (it answered 200 before)."""
    import psycopg2

    url = private_pg.new_database()
    name = url.rsplit("/", 1)[1]
    server = start_server(url, **FAULT_ENV)
    assert wait_health(server.url, 200, 10)["status"] == "ok"
    admin = psycopg2.connect(private_pg.dsn())
    admin.autocommit = True

    def run(sql: str, *args) -> list:
        with admin.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []

    try:  # no new connection to the database; the bus's listener cut (the pool's stay open)
        run(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        cut = run(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
            "AND application_name = %s", name, LISTEN_NAME,
        )
        assert cut == [(True,)]
        assert wait_health(server.url, 503, 15)["status"] == "bus_disconnected"
    finally:
        run(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        admin.close()
    assert wait_health(server.url, 200, 30)["status"] == "ok"
    assert "reconnected to PostgreSQL" in server.log_path.read_text(errors="replace")


# ---------------------------------------------------------------- a policy worker killed mid-turn


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    require("torch")
    from policy_worker.tiny import build_tiny_idefics2

    return build_tiny_idefics2(tmp_path_factory.mktemp("tiny-idefics2"), seed=0)


async def _wait_rows(url: str, query, predicate, timeout: float, what: str):
    db = Database(url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            async with db.session() as s:
                rows = list((await s.execute(query)).scalars())
            if predicate(rows):
                return rows
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {rows}")
    finally:
        await db.close()


@pytest.mark.model
async def test_worker_killed_while_holding_a_claim_another_takes_over(
    start_server, private_pg, kilogram_dir, tiny_model_dir, tmp_path
):
    url = private_pg.new_database()
    server = start_server(
        url, MULTIREF_LISTENER="model", MULTIREF_RULES__MAX_TURNS="3",
        MULTIREF_RULES__MODEL_TURN_SECONDS="90", MULTIREF_CLICK_DELAY_SECONDS="0.05",
    )
    workers: list[WorkerProcess] = []
    try:
        # The first worker claims a turn and then waits for its batch to fill (--max-wait 120):
        # the claim is held, deterministically, until the test kills the worker.
        doomed = WorkerProcess(url, tiny_model_dir, tmp_path / "w1.log", tangrams=kilogram_dir,
                               args=("--lease", "3", "--max-wait", "120"))
        workers.append(doomed)
        await _wait_rows(url, select(WorkerHeartbeat), lambda r: any(h.status == "serving" for h in r), 120, "worker 1")
        token = await join(server.url, {"PROLIFIC_PID": "kill-worker", "STUDY_ID": "s", "SESSION_ID": "1"})
        speaker = await BotClient(server.url, token).connect()
        seen = watch(speaker)
        view = await speaker.wait_for(lambda b: b.view and b.view.phase == "speaking" and b.view, 30)
        assert view.listener_kind == "model"
        await speaker.say("select the bird and the house")
        [claimed] = await _wait_rows(
            url, select(ListenerRequest).where(ListenerRequest.game_id == view.game_id),
            lambda r: len(r) == 1 and r[0].status == "claimed", 30, "the claim",
        )
        assert str(doomed.proc.pid) in claimed.worker_id
        doomed.kill()  # dies holding the claim
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient() as c:
            assert (await c.get(server.url + "/healthz")).status_code == 200
        rescuer = WorkerProcess(url, tiny_model_dir, tmp_path / "w2.log", tangrams=kilogram_dir, args=("--lease", "20"))
        workers.append(rescuer)
        from app.bot import play_speaker

        final = await play_speaker(speaker, timeout=180)
        assert final.end_reason in ("success", "max_turns"), final.end_reason
        requests = await _wait_rows(
            url, select(ListenerRequest).where(ListenerRequest.game_id == view.game_id).order_by(ListenerRequest.turn),
            lambda r: all(x.status in ("applied", "cancelled", "stale") for x in r), 30, "requests settled",
        )
        first = requests[0]
        assert first.turn == 1 and first.status == "applied"
        assert first.attempts == 2 and str(rescuer.proc.pid) in first.worker_id
        assert all(r.attempts == 1 and str(rescuer.proc.pid) in r.worker_id for r in requests[1:] if r.status == "applied")
        await speaker.close()
        events = await assert_log_sound(url, view.game_id, seen=[seen])
        # the model's first turn was applied once: one submission in turn 1
        assert sum(1 for e in events if e.type == "selection_submitted" and e.turn == 1) == 1
        await check_all(url)
    finally:
        for w in workers:
            w.stop()



def test_the_private_cluster_finds_any_installed_postgresql_newest_first(monkeypatch, tmp_path):
    from tests.pgcluster import candidate_bins, find_bin

    for version in ("9.6", "10", "17", "18"):
        (tmp_path / version / "bin").mkdir(parents=True)
    for version in ("9.6", "17"):
        (tmp_path / version / "bin" / "initdb").write_text("")
    monkeypatch.delenv("MULTIREF_PG_BIN", raising=False)
    assert [p.parent.name for p in candidate_bins(tmp_path)] == ["18", "17", "10", "9.6"]
    assert find_bin(tmp_path) == tmp_path / "17" / "bin"  # the newest that has initdb
    monkeypatch.setenv("MULTIREF_PG_BIN", str(tmp_path / "9.6" / "bin"))
    assert find_bin(tmp_path) == tmp_path / "9.6" / "bin"  # the setting wins
