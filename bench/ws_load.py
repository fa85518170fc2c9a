"""N concurrent bot games against a running server on loopback, with SQLite and with PostgreSQL.

    .venv/bin/python bench/ws_load.py --games 500 --db both --duration 60

For each database (``--db sqlite|postgres|both``) the benchmark starts ``python -m app.cli serve``
itself on a fresh database (a new SQLite file, or a new PostgreSQL database dropped afterwards),
first for a small baseline (``--baseline-games``, default 50) and then for ``--games``; with
``--url`` it targets a server that is already running instead (``--database-url`` lets it verify
that server's event log too).

Every game is two bots on two real websockets speaking the real protocol (``app.protocol``):
the game is made through ``POST /api/admin/games`` (admin token handed to the server through
``MULTIREF_ADMIN_TOKEN``); the speaker sends one scripted message ``--speak-delay`` seconds after
its turn starts, the listener clicks the named images ``--click-gap`` seconds apart (sometimes a
wrong one, ``--wrong-click-rate``) and submits. Windows are long (``MULTIREF_RULES__*``), so no
game times out; a slot starts a new game as soon as its game ends. The generator runs in its own
process(es) (``--procs``) on uvloop, separate from the server's.

Measured, per run:

* latency of every action (message, click, submit) sent in the measurement window: from the
  sender's send timestamp to the moment the PARTNER's socket delivered the state frame caused by
  it. That frame is the one whose version is the version the action produced (the first version
  above the action's base version that the sender receives: its acknowledgement); both bots of a
  game live in one generator process, so both timestamps come from one clock;
* events/s: events committed to the log (database ``at``) inside the measurement window;
* server CPU% (100% = one core) and peak RSS, sampled with psutil on the server's pid; also the
  generator's CPU and PostgreSQL's (all ``postgres`` processes: other users of it count too);
* errors: error frames by code, action timeouts, exceptions (connects, HTTP, closed sockets);
* lost: a (client, version) pair that should have reached the client but did not. Exactly: the
  event log is grouped into commands (consecutive events with the same ``at`` and ``actor``: one
  ``GameHub.execute`` each, broadcast once at the last event's seq). A client must receive every
  command end seq above the first version it saw whose command happened before its game started
  closing its sockets. Also lost: an acknowledged action whose resulting version the partner
  never got, or whose first event in the log is not that action (type, image, text);
* dup: a version delivered twice to one client, a repeated or missing seq in a game's log (seqs
  must be 1..n), or an action event in the log (message, click, submit not made by the server)
  that no sent action accounts for: every sent click appears exactly once.

The generator's own cyclic garbage collector is off during the measurement window (one
collection just before it; ``--gen-gc`` keeps it on): with 1,000 sockets its full collections
stopped its loop for up to ~400 ms several times a minute, and every frame arriving meanwhile
counted that pause as latency, in the floor's run and the server's alike. The Diagnostics table
shows the generator's full collections in the window (count, longest and total ms).

With ``--floor`` each size is first played against ``bench/floor_relay.py``, the least a durable
relay on this stack must do per action (parse the JSON, append one row to SQLite in WAL mode, send
a small state frame to each seat), and a last table gives the server's CPU per action and p99 as
multiples of that floor: the numbers to track, since absolute figures on a shared machine drift.

The output ends with one line per run, ``games=N p99_ms=X lost=L dup=D``, in the table's order
(baselines first, the largest run last).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ADMIN_TOKEN = "bench-admin-token"
PG_ADMIN_DSN = os.environ.get("MULTIREF_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
FLOOR = "floor"  # the run kind of bench/floor_relay.py (``--floor``)
REFERENCE_TANGRAMS = ROOT.parent / "shared" / "reference" / "kilogram" / "tangrams-svg"

# Rules that never time out during a run: players act in seconds, windows last an hour.
LONG_RULES = {
    "MULTIREF_RULES__TURN_SECONDS": "7200",
    "MULTIREF_RULES__SPEAKER_SECONDS": "3600",
    "MULTIREF_RULES__JOIN_TIMEOUT_SECONDS": "3600",
    "MULTIREF_RULES__DISCONNECT_GRACE_SECONDS": "3600",
}

# Action kinds, the cause of the state frame they produce, and the event type of their first event.
CAUSES = {
    "utterance": ("utterance_sent",),
    "click": ("selection_toggled",),
    "submit": ("turn_started", "game_ended"),
}
FIRST_EVENT = {"utterance": "utterance_sent", "click": "selection_toggled", "submit": "selection_submitted"}


# =========================================================================== generator (child)


@dataclass
class GenConfig:
    url: str
    admin_token: str
    slots: int
    slot_offset: int
    total_slots: int
    start_at: float  # wall clock: the ramp begins
    ramp_seconds: float
    settle_seconds: float
    duration: float
    speak_delay: tuple[float, float]
    click_gap: tuple[float, float]
    targets_per_turn: int
    wrong_click_rate: float
    action_timeout: float
    seed: int
    http_connections: int = 16
    gc_in_window: bool = False  # let the generator's own cyclic collector run while measuring

    @property
    def measure_start(self) -> float:
        return self.start_at + self.ramp_seconds + self.settle_seconds

    @property
    def measure_end(self) -> float:
        return self.measure_start + self.duration


@dataclass
class ActionRecord:
    game_id: str
    seat: str
    kind: str
    base: int
    t_send: float
    tangram: str | None = None
    text: str | None = None
    ack: int | None = None
    t_ack: float | None = None
    cause: str | None = None
    status: str = "sent"  # sent | acked | timeout | rejected | closed
    latency: float | None = None  # partner delivery - send, seconds
    partner_missing: bool = False


@dataclass
class ClientRecord:
    seat: str
    first: int | None
    versions: list[int]
    dups: int
    gaps: int


@dataclass
class GameRecord:
    game_id: str
    t_created: float
    t_close: float | None = None
    outcome: str | None = None
    clients: list[ClientRecord] = field(default_factory=list)


class Stop(Exception):
    """The measurement ended: no new action."""


class WaitTimeout(Exception):
    pass


class Generator:
    def __init__(self, cfg: GenConfig) -> None:
        import httpx
        import websockets
        from websockets.asyncio.client import connect

        from app.bot import ws_url
        from app.protocol import SERVER_FRAME

        self.cfg = cfg
        self.httpx = httpx
        self.websockets = websockets
        self.connect = connect
        self.ws_url = ws_url(cfg.url)
        self.parse = SERVER_FRAME.validate_json
        self.rng = random.Random(cfg.seed)
        self.stopping = False
        self.clients: set["Client"] = set()
        self.actions: list[ActionRecord] = []
        self.games: list[GameRecord] = []
        self.open_games: dict[str, tuple[GameRecord, "Client", "Client"]] = {}
        self.errors: Counter[str] = Counter()
        self.start_latencies: list[float] = []
        self.start_phases: list[tuple[float, float, float, float]] = []  # t0, POST, sockets, first views
        self.loop_lags: list[float] = []
        self.gc_pauses: list[tuple[int, float]] = []  # (generation, seconds) in the window
        self._gc_t = 0.0
        self.games_done = 0
        self.actions_by_game: dict[str, list[ActionRecord]] = {}

    # ------------------------------------------------------------ phases

    async def run(self) -> dict:
        cfg = self.cfg
        limits = self.httpx.Limits(
            max_connections=cfg.http_connections, max_keepalive_connections=cfg.http_connections
        )
        self.http = self.httpx.AsyncClient(base_url=cfg.url, timeout=60, limits=limits)
        # httpcore's pool scans every queued request on each change: keep its queue empty
        self.http_slots = asyncio.Semaphore(cfg.http_connections)
        gc.callbacks.append(self._gc_callback)
        lag = asyncio.create_task(self._lag_monitor())
        slots = [asyncio.create_task(self._slot(i)) for i in range(cfg.slots)]
        if not cfg.gc_in_window:
            # The generator's full collections stopped its loop for up to ~400 ms several times
            # a minute (1,000 sockets, every action's record kept): frames arriving meanwhile
            # were timestamped late, the same in the floor's run and the server's, and that
            # was a large part of both p99s. So it does not collect cycles while measuring
            # (their garbage, ~100 MB a minute, is collected after the window). The last
            # collection before it runs in the settling time, before any measured action.
            await _sleep_until(cfg.measure_start - min(2.0, cfg.settle_seconds / 2))
            gc.collect()
            gc.disable()
        await _sleep_until(cfg.measure_end)
        gc.enable()
        self.stopping = True
        for c in list(self.clients):
            c.wake()
        done, pending = await asyncio.wait(slots, timeout=cfg.action_timeout + 10)
        for t in pending:
            t.cancel()
            self.errors["slot_stuck"] += 1
        await asyncio.sleep(1.0)  # frames in flight to partners
        lag.cancel()
        now = time.time()
        for rec, _, _ in self.open_games.values():
            rec.t_close = now
        sem = asyncio.Semaphore(200)

        async def close(rec, sp, li):
            async with sem:
                self._finish_record(rec, sp, li)
                await asyncio.gather(sp.close(), li.close())

        await asyncio.gather(*(close(*g) for g in self.open_games.values()))
        await self.http.aclose()
        return {
            "actions": [a.__dict__ for a in self.actions],
            "games": [
                {**g.__dict__, "clients": [c.__dict__ for c in g.clients]} for g in self.games
            ],
            "errors": dict(self.errors),
            "start_latencies": self.start_latencies,
            "start_phases": self.start_phases,
            "loop_lags": self.loop_lags,
            "gc_pauses": self.gc_pauses,
            "games_done": self.games_done,
        }

    def _gc_callback(self, phase: str, info: dict) -> None:
        """The generator's own cyclic collections in the window: they stop its loop, and a
        frame that arrives meanwhile is timestamped late (it counts in every latency)."""
        if phase == "start":
            self._gc_t = time.perf_counter()
        elif self.cfg.measure_start <= time.time() < self.cfg.measure_end:
            self.gc_pauses.append((info["generation"], time.perf_counter() - self._gc_t))

    async def _lag_monitor(self) -> None:
        interval = 0.05
        while True:
            t = time.perf_counter()
            await asyncio.sleep(interval)
            lag = time.perf_counter() - t - interval
            now = time.time()
            if self.cfg.measure_start <= now < self.cfg.measure_end:
                self.loop_lags.append(lag)

    async def _slot(self, i: int) -> None:
        cfg = self.cfg
        global_i = cfg.slot_offset + i
        await _sleep_until(cfg.start_at + cfg.ramp_seconds * global_i / max(1, cfg.total_slots))
        while not self.stopping:
            try:
                await self._game()
            except Stop:
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # counted; the slot starts a new game after a pause
                self.errors[f"exception:{type(exc).__name__}"] += 1
                await asyncio.sleep(1.0)

    # ------------------------------------------------------------ one game

    async def _game(self) -> None:
        t0 = time.time()
        async with self.http_slots:
            r = await self.http.post(
                "/api/admin/games",
                json={"config": None, "listener": "human"},
                headers={"Authorization": f"Bearer {self.cfg.admin_token}"},
            )
        if r.status_code != 200:
            self.errors[f"http_{r.status_code}"] += 1
            raise RuntimeError(f"create game: {r.status_code}")
        t_post = time.time()
        created = r.json()
        rec = GameRecord(game_id=created["game_id"], t_created=t0)
        self.games.append(rec)
        sp = Client(self, created["speaker_token"])
        li = Client(self, created["listener_token"])
        self.open_games[rec.game_id] = (rec, sp, li)
        finished = False
        try:
            await asyncio.gather(sp.connect(), li.connect())
            t_conn = time.time()
            for c in (sp, li):
                await c.wait(lambda c: c.view is not None and c.view.phase != "waiting", 60)
            t_start = time.time()
            self.start_latencies.append(t_start - t0)
            self.start_phases.append((t0, t_post - t0, t_conn - t_post, t_start - t_conn))
            tasks = [
                asyncio.create_task(self._speaker(rec, sp, li)),
                asyncio.create_task(self._listener(rec, li, sp)),
            ]
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            excs = [t.exception() for t in done if t.exception() is not None]
            if excs and all(isinstance(e, Stop) for e in excs) and pending:
                # the measurement ended: let the other seat finish its action in flight
                more, pending = await asyncio.wait(pending, timeout=self.cfg.action_timeout + 5)
                excs += [t.exception() for t in more if t.exception() is not None]
            for t in pending:
                t.cancel()
            for exc in excs:
                if not isinstance(exc, Stop):
                    raise exc
            if excs:
                raise excs[0]
            rec.outcome = sp.view.outcome
            self.games_done += 1
            finished = True
        except WaitTimeout:
            self.errors["timeout"] += 1
        except Stop:
            if self.stopping:
                raise
        finally:
            if finished or not self.stopping:
                self.open_games.pop(rec.game_id, None)
                rec.t_close = time.time()
                self._finish_record(rec, sp, li)
                await asyncio.gather(sp.close(), li.close())

    def _finish_record(self, rec: GameRecord, *clients: "Client") -> None:
        rec.clients = [
            ClientRecord(
                seat=c.seat or "?",
                first=c.first,
                versions=sorted(c.recv),
                dups=c.dups,
                gaps=c.gaps,
            )
            for c in clients
        ]
        for a in self.actions_by_game.pop(rec.game_id, []):
            partner = clients[1] if a.seat == clients[0].seat else clients[0]
            if a.ack is not None:
                t = partner.recv.get(a.ack)
                if t is None:
                    a.partner_missing = True
                else:
                    a.latency = t - a.t_send

    async def _think(self, bounds: tuple[float, float]) -> None:
        await asyncio.sleep(self.rng.uniform(*bounds))
        if self.stopping:
            raise Stop()

    async def _act(self, rec: GameRecord, me: "Client", kind: str, frame, **extra) -> None:
        base = me.version
        n_errors = len(me.errors)
        payload = frame.model_dump_json()
        a = ActionRecord(game_id=rec.game_id, seat=me.seat, kind=kind, base=base, t_send=0.0, **extra)
        a.t_send = time.time()
        await me.ws.send(payload)
        self.actions.append(a)
        self.actions_by_game.setdefault(rec.game_id, []).append(a)
        try:
            await me.wait(
                lambda c: c.version > base or len(c.errors) > n_errors or c.closed,
                self.cfg.action_timeout,
                stoppable=False,
            )
        except WaitTimeout:
            a.status = "timeout"
            raise
        if len(me.errors) > n_errors:
            a.status = "rejected"
            raise RuntimeError(f"{kind} rejected: {me.errors[-1]}")
        if me.version <= base:
            a.status = "closed"
            raise RuntimeError("socket closed")
        a.ack = min(v for v in me.recv if v > base)
        a.t_ack = me.recv[a.ack]
        a.cause = me.causes.get(a.ack)
        a.status = "acked"
        if a.cause not in CAUSES[kind]:
            self.errors[f"unexpected_cause:{kind}->{a.cause}"] += 1

    async def _speaker(self, rec: GameRecord, sp: "Client", li: "Client") -> None:
        from app.protocol import UtteranceFrame

        spoken: set[int] = set()
        while True:
            await sp.wait(
                lambda c: c.view.phase == "ended"
                or (c.view.phase == "speaking" and c.view.turn not in spoken),
                self.cfg.action_timeout * 4,
            )
            if sp.view.phase == "ended":
                return
            spoken.add(sp.view.turn)
            await self._think(self.cfg.speak_delay)
            view = sp.view
            text = utterance(view, self.cfg.targets_per_turn)
            await self._act(
                rec, sp, "utterance", UtteranceFrame(version=view.version, text=text), text=text
            )

    async def _listener(self, rec: GameRecord, li: "Client", sp: "Client") -> None:
        from app.protocol import ClickFrame, SubmitFrame

        done: set[int] = set()
        while True:
            await li.wait(
                lambda c: c.view.phase == "ended"
                or (c.view.phase == "selecting" and c.view.turn not in done),
                self.cfg.action_timeout * 4,
            )
            view = li.view
            if view.phase == "ended":
                return
            done.add(view.turn)
            known = {t.tangram_id for t in view.tiles}
            current = {t.tangram_id for t in view.tiles if t.selected}
            deselect, select = parse_utterance(view.messages[-1].text, known)
            clicks = sorted(current & deselect) + sorted(select - current)
            spare = sorted(known - current - select - deselect)
            if spare and self.rng.random() < self.cfg.wrong_click_rate:
                clicks.insert(self.rng.randrange(len(clicks) + 1), self.rng.choice(spare))
            for tid in clicks:
                await self._think(self.cfg.click_gap)
                await self._act(
                    rec, li, "click", ClickFrame(version=li.version, tangram_id=tid), tangram=tid
                )
            await self._think(self.cfg.click_gap)
            await self._act(rec, li, "submit", SubmitFrame(version=li.version))


class Client:
    """One bot's websocket: keeps the latest view and when each version arrived."""

    def __init__(self, gen: Generator, token: str) -> None:
        self.gen = gen
        self.token = token
        self.ws = None
        self.seat: str | None = None
        self.view = None
        self.version = 0
        self.first: int | None = None
        self.recv: dict[int, float] = {}
        self.causes: dict[int, str | None] = {}
        self.dups = 0
        self.gaps = 0
        self.errors: list[str] = []
        self.closed = False
        self._waiter: asyncio.Future | None = None
        self._reader: asyncio.Task | None = None
        self._last_phase: str | None = None

    async def connect(self) -> None:
        from app.protocol import HelloFrame

        self.ws = await self.gen.connect(
            self.gen.ws_url, max_size=2**20, open_timeout=60, ping_interval=None,
            close_timeout=5,
        )
        self.gen.clients.add(self)
        await self.ws.send(HelloFrame(token=self.token).model_dump_json())
        self._reader = asyncio.create_task(self._read())

    async def close(self) -> None:
        self.gen.clients.discard(self)
        if self.ws is not None:
            try:
                await self.ws.close()
            except Exception:
                pass
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, 10)
            except BaseException:
                self._reader.cancel()

    def wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _read(self) -> None:
        gen = self.gen
        try:
            async for raw in self.ws:
                t = time.time()
                frame = gen.parse(raw)
                kind = frame.type
                if kind == "state":
                    view = frame.view
                    v = view.version
                    if v in self.recv:
                        self.dups += 1
                    else:
                        if self.first is not None and v > self.version:
                            # client-side gap check: a jump must be explained by the cause
                            expected = 2 if view.cause in ("turn_started", "game_ended") else 1
                            if view.cause == "game_ended" and self._last_phase != "selecting":
                                expected = 1
                            if v - self.version > expected:
                                self.gaps += 1
                        self.recv[v] = t
                        self.causes[v] = view.cause
                    if self.first is None:
                        self.first = v
                        self.seat = view.seat.value
                    if v >= self.version:
                        self.version = v
                        self.view = view
                        self._last_phase = view.phase.value
                elif kind == "error":
                    self.errors.append(frame.code)
                    gen.errors[f"error_frame:{frame.code}"] += 1
                elif kind == "released":
                    gen.errors["released"] += 1
                self.wake()
        except self.gen.websockets.ConnectionClosed:
            pass
        except Exception as exc:
            gen.errors[f"reader:{type(exc).__name__}"] += 1
        finally:
            self.closed = True
            self.wake()

    async def wait(self, predicate, timeout: float, stoppable: bool = True) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if _safe(predicate, self):
                return
            if stoppable and self.gen.stopping:
                raise Stop()
            if self.closed:
                raise RuntimeError("socket closed")
            left = deadline - loop.time()
            if left <= 0:
                raise WaitTimeout()
            fut = loop.create_future()
            self._waiter = fut
            handle = loop.call_later(left, _set, fut)
            try:
                await fut
            finally:
                handle.cancel()
                self._waiter = None


def _safe(predicate, client) -> bool:
    try:
        return bool(predicate(client))
    except AttributeError:
        return False


def _set(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


async def _sleep_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


def utterance(view, per_turn: int) -> str:
    """The scripted speaker: undo wrong picks, name up to ``per_turn`` missing targets."""
    wrong = [t.tangram_id for t in view.tiles if t.selected and not t.target]
    missing = [t.tangram_id for t in view.tiles if t.target and not t.selected]
    parts = []
    if wrong:
        parts.append("deselect " + " ".join(wrong))
    if missing:
        parts.append("select " + " ".join(missing[:per_turn]))
    return "; ".join(parts) or "keep it"


def parse_utterance(text: str, known: set[str]) -> tuple[set[str], set[str]]:
    deselect: set[str] = set()
    select: set[str] = set()
    for part in text.split(";"):
        words = part.split()
        if words:
            ids = {w for w in words[1:] if w in known}
            (deselect if words[0] == "deselect" else select).update(ids)
    return deselect, select


def generator_main(cfg: GenConfig, out) -> None:
    """Entry point of a generator process: plays ``cfg.slots`` game slots, sends its records."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        result = asyncio.run(Generator(cfg).run())
    except BaseException as exc:  # report instead of dying silently
        result = {"fatal": f"{type(exc).__name__}: {exc}"}
    out.put(result)


# =========================================================================== server and database


def pg_exec(sql: str, dsn: str = PG_ADMIN_DSN) -> None:
    import psycopg2

    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


class FreshDatabase:
    """A new SQLite file or PostgreSQL database, removed on ``drop``."""

    def __init__(self, kind: str, pg_dsn: str, workdir: Path) -> None:
        self.kind = kind
        self.pg_dsn = pg_dsn
        if kind == "sqlite":
            self.path = workdir / f"bench-{uuid.uuid4().hex[:8]}.sqlite3"
            self.url = f"sqlite+aiosqlite:///{self.path}"
        else:
            self.name = f"mr_bench_{uuid.uuid4().hex[:12]}"
            pg_exec(f'CREATE DATABASE "{self.name}"', pg_dsn)
            base = pg_dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
            self.url = f"{base}/{self.name}"

    def drop(self) -> None:
        if self.kind == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
        else:
            try:
                pg_exec(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)', self.pg_dsn)
            except Exception as exc:
                print(f"warning: could not drop {self.name}: {exc}", file=sys.stderr)


def start_server(database_url: str, log_dir: Path, extra_env: dict[str, str], wrapper: str | None = None):
    """``python -m app.cli serve`` (or ``python WRAPPER``) on a free port, with the benchmark's rules."""
    from app.processes import ServerProcess

    env = {
        "MULTIREF_ADMIN_TOKEN": ADMIN_TOKEN,
        "MULTIREF_MAX_CONNECTIONS_PER_ADDRESS": "0",
        **LONG_RULES,
        **extra_env,
    }
    if "MULTIREF_TANGRAMS" not in {**os.environ, **env} and REFERENCE_TANGRAMS.is_dir():
        env["MULTIREF_TANGRAMS"] = str(REFERENCE_TANGRAMS)
    command = [sys.executable, wrapper] if wrapper else None
    return ServerProcess(database_url, log_dir, env=env, command=command).start(timeout=90)


def pid_listening_on(url: str) -> int | None:
    import psutil
    from urllib.parse import urlparse

    port = urlparse(url).port or 80
    try:
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return c.pid
    except (psutil.AccessDenied, PermissionError):
        pass
    return None


class Sampler(threading.Thread):
    """Samples CPU time and RSS of the server, the generators and PostgreSQL."""

    def __init__(self, server_pid: int | None, gen_pids: list[int], interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        import psutil

        self.psutil = psutil
        self.interval = interval
        self.server = psutil.Process(server_pid) if server_pid else None
        self.gens = [psutil.Process(p) for p in gen_pids]
        self.samples: list[tuple[float, float, float, float, float]] = []  # t, srv, gen, pg, rss
        self.loads: list[float] = []
        self.peak_rss = 0
        self._halt = threading.Event()
        self._pg: dict[int, object] = {}

    def _cpu(self, procs) -> float:
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except self.psutil.Error:
                pass
        return total

    def _pg_cpu(self) -> float:
        total = 0.0
        for p in self.psutil.process_iter(["name"]):
            if (p.info.get("name") or "").startswith("postgres"):
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except self.psutil.Error:
                    pass
        return total

    def run(self) -> None:
        while not self._halt.is_set():
            rss = 0
            if self.server is not None:
                try:
                    rss = self.server.memory_info().rss
                except self.psutil.Error:
                    pass
            self.peak_rss = max(self.peak_rss, rss)
            self.samples.append(
                (
                    time.time(),
                    self._cpu([self.server] if self.server else []),
                    self._cpu(self.gens),
                    self._pg_cpu(),
                    rss,
                )
            )
            self.loads.append(os.getloadavg()[0])
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def cpu_percent(self, t0: float, t1: float) -> tuple[float, float, float]:
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return (math.nan, math.nan, math.nan)
        a, b = inside[0], inside[-1]
        dt = b[0] - a[0]
        return tuple(100.0 * (b[i] - a[i]) / dt for i in (1, 2, 3))  # type: ignore[return-value]

    def load_during(self, t0: float, t1: float) -> float:
        inside = [l for s, l in zip(self.samples, self.loads) if t0 <= s[0] <= t1]
        return max(inside) if inside else os.getloadavg()[0]


def fetch_events(database_url: str) -> dict[str, list[tuple]]:
    """Every game's log as (seq, type, at, actor, data), in seq order."""
    rows: list[tuple]
    sql = "SELECT game_id, seq, type, at, actor, data FROM game_events ORDER BY game_id, seq"
    if database_url.startswith("sqlite"):
        import sqlite3

        path = database_url.split(":///", 1)[1]
        conn = sqlite3.connect(path, timeout=60)
        try:
            rows = conn.execute(sql).fetchall()
        finally:
            conn.close()
        rows = [(g, s, t, at, actor, json.loads(d) if isinstance(d, str) else d) for g, s, t, at, actor, d in rows]
    else:
        import psycopg2

        dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        conn = psycopg2.connect(dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                rows = cur.fetchall()
        finally:
            conn.close()
    logs: dict[str, list[tuple]] = {}
    for g, seq, typ, at, actor, data in rows:
        logs.setdefault(g, []).append((seq, typ, at, actor, data))
    return logs


@dataclass
class Verdict:
    lost: int = 0
    dup: int = 0
    details: Counter = field(default_factory=Counter)
    events_in_window: int = 0
    db_checked: bool = False


def verify(games: list[dict], actions: list[dict], logs: dict[str, list[tuple]] | None,
           window: tuple[float, float]) -> Verdict:
    v = Verdict()
    missing: set[tuple[str, str, int]] = set()
    # client side: versions delivered twice, actions acknowledged but never seen by the partner
    for g in games:
        for c in g["clients"]:
            if c["dups"]:
                v.dup += c["dups"]
                v.details["dup_delivery"] += c["dups"]
    for a in actions:
        if a["status"] == "acked" and a["partner_missing"]:
            partner = "listener" if a["seat"] == "speaker" else "speaker"
            missing.add((a["game_id"], partner, a["ack"]))
    if logs is None:
        for g in games:
            for c in g["clients"]:
                v.details["client_gaps"] += c["gaps"]
        v.lost = len(missing) + v.details["client_gaps"]
        v.details["partner_missing"] = len(missing)
        return v
    v.db_checked = True
    t0, t1 = window
    by_game_actions: dict[str, dict[int, dict]] = {}
    for a in actions:
        by_game_actions.setdefault(a["game_id"], {})[a["base"] + 1] = a
    for game_id, log in logs.items():
        v.events_in_window += sum(1 for e in log if t0 <= e[2] < t1)
        seqs = [e[0] for e in log]
        if seqs != list(range(1, len(seqs) + 1)):
            v.dup += max(1, len(seqs) - len(set(seqs)))
            v.details["log_seq_not_consecutive"] += 1
    for g in games:
        log = logs.get(g["game_id"])
        if log is None:
            v.details["game_missing_in_db"] += 1
            v.lost += 1
            continue
        # commands: runs of events with the same (at, actor); broadcast at the run's last seq
        ends: list[tuple[int, float]] = []
        for i, (seq, typ, at, actor, data) in enumerate(log):
            nxt = log[i + 1] if i + 1 < len(log) else None
            if nxt is None or (nxt[2], nxt[3]) != (at, actor):
                ends.append((seq, at))
        t_close = g["t_close"] or math.inf
        for c in g["clients"]:
            if c["first"] is None:
                continue
            got = set(c["versions"])
            for seq, at in ends:
                if seq > c["first"] and at < t_close and seq not in got:
                    missing.add((g["game_id"], c["seat"], seq))
        # actions against the log: each one is the event right after its base version
        sent = by_game_actions.get(g["game_id"], {})
        events = {e[0]: e for e in log}
        for seq, a in sent.items():
            e = events.get(seq)
            matches = (
                e is not None
                and e[1] == FIRST_EVENT[a["kind"]]
                and (a["kind"] != "click" or e[4].get("tangram_id") == a["tangram"])
                and (a["kind"] != "utterance" or e[4].get("text") == " ".join((a["text"] or "").split()))
            )
            if a["status"] == "acked" and not matches:
                v.lost += 1
                v.details["acked_action_not_in_log"] += 1
            elif a["status"] != "acked" and matches:
                v.details["unacked_action_applied"] += 1
        for seq, typ, at, actor, data in log:
            if actor in ("speaker", "listener") and typ in FIRST_EVENT.values():
                if data.get("auto"):
                    continue
                a = sent.get(seq)
                if a is None or FIRST_EVENT[a["kind"]] != typ:
                    v.dup += 1
                    v.details["log_action_not_sent"] += 1
    v.details["partner_missing"] = len(missing)
    v.lost += len(missing)
    return v


# =========================================================================== one run


@dataclass
class RunResult:
    db: str
    games: int
    duration: float
    sockets: int
    actions: int
    lat_ms: dict[str, float]
    ack_ms: dict[str, float]
    events_per_s: float
    actions_per_s: float
    server_cpu: float
    gen_cpu: float
    pg_cpu: float
    peak_rss_mb: float
    errors: int
    error_kinds: dict
    lost: int
    dup: int
    details: dict
    games_done: int
    start_p99_ms: float
    loop_lag_p99_ms: float
    load: float
    db_checked: bool
    gen_gc2: tuple[int, float, float] = (0, 0.0, 0.0)  # generator's full collections: n, max ms, total ms
    start_phases: dict = field(default_factory=dict)  # "ramp"/"window" -> phase -> quantiles


def quantiles(values: list[float], qs=(0.5, 0.95, 0.99)) -> dict[str, float]:
    if not values:
        return {f"p{int(q * 100)}": math.nan for q in qs} | {"max": math.nan}
    s = sorted(values)
    out = {}
    for q in qs:
        k = min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))
        out[f"p{int(q * 100)}"] = s[k] * 1000
    out["max"] = s[-1] * 1000
    return out


def run_once(args, db_kind: str, games: int, duration: float, workdir: Path) -> RunResult:
    db = None
    server = None
    try:
        if args.url:
            url = args.url
            database_url = args.database_url
            server_pid = args.server_pid or pid_listening_on(url)
        elif db_kind == FLOOR:  # the minimal durable relay: no event log of ours to verify
            db = FreshDatabase("sqlite", args.pg_dsn, workdir)
            database_url = None
            server = start_server(db.url, workdir, {}, str(ROOT / "bench" / "floor_relay.py"))
            url = server.url
            server_pid = server.pid
        else:
            db = FreshDatabase(db_kind, args.pg_dsn, workdir)
            database_url = db.url
            extra = dict(kv.split("=", 1) for kv in args.server_env)
            server = start_server(db.url, workdir, extra, args.server_wrapper)
            url = server.url
            server_pid = server.pid
        procs = max(1, min(args.procs, games))
        start_at = time.time() + 4.0  # generators import and connect their loops meanwhile
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        children = []
        per = [games // procs + (1 if i < games % procs else 0) for i in range(procs)]
        offset = 0
        for i, n in enumerate(per):
            cfg = GenConfig(
                url=url, admin_token=args.admin_token, slots=n, slot_offset=offset,
                total_slots=games, start_at=start_at, ramp_seconds=args.ramp,
                settle_seconds=args.settle, duration=duration,
                speak_delay=tuple(args.speak_delay), click_gap=tuple(args.click_gap),
                targets_per_turn=args.targets_per_turn, wrong_click_rate=args.wrong_click_rate,
                action_timeout=args.action_timeout, seed=args.seed * 1000 + i,
                gc_in_window=args.gen_gc,
            )
            offset += n
            p = ctx.Process(target=generator_main, args=(cfg, queue), daemon=True)
            p.start()
            children.append((p, cfg))
        sampler = Sampler(server_pid, [p.pid for p, _ in children])
        sampler.start()
        if args.py_spy and server_pid and db_kind != FLOOR:
            cfg0 = children[0][1]
            spy_out = Path(args.py_spy).with_suffix(f".{db_kind}.{games}.txt")
            delay = max(0.0, cfg0.measure_start - time.time())
            spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            targets = [(server_pid, spy_out), (children[0][0].pid, spy_out.with_suffix(".gen.txt"))]
            for pid, out in targets:
                spy = threading.Timer(delay, lambda pid=pid, out=out: subprocess.Popen(
                    [spy_bin, "record", "--pid", str(pid), "--duration", str(int(duration)),
                     "--rate", "100", "--nonblocking", "--gil", "--format", "raw", "-o", str(out)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                ) if Path(spy_bin).exists() else None)
                spy.daemon = True
                spy.start()
        if args.server_wrapper and server is not None and db_kind != FLOOR:  # a profiler: profile the window only
            cfg0 = children[0][1]
            for at, sig in ((cfg0.measure_start, signal.SIGUSR1), (cfg0.measure_end, signal.SIGUSR2)):
                timer = threading.Timer(max(0.0, at - time.time()), os.kill, (server.pid, sig))
                timer.daemon = True
                timer.start()
        results = []
        wait_s = args.ramp + args.settle + duration + args.action_timeout + 120
        for _ in children:
            results.append(queue.get(timeout=wait_s))
        for p, _ in children:
            p.join(30)
        sampler.stop()
        fatal = [r["fatal"] for r in results if "fatal" in r]
        if fatal:
            raise RuntimeError("generator failed: " + "; ".join(fatal))
        cfg0 = children[0][1]
        t0, t1 = cfg0.measure_start, cfg0.measure_end
        actions = [a for r in results for a in r["actions"]]
        all_games = [g for r in results for g in r["games"]]
        errors: Counter[str] = Counter()
        for r in results:
            errors.update(r["errors"])
        logs = fetch_events(database_url) if database_url else None
        verdict = verify(all_games, actions, logs, (t0, t1))
        in_window = [a for a in actions if t0 <= a["t_send"] < t1]
        lat = [a["latency"] for a in in_window if a["latency"] is not None]
        ack = [a["t_ack"] - a["t_send"] for a in in_window if a["t_ack"] is not None]
        if verdict.db_checked:
            events_per_s = verdict.events_in_window / duration
        else:  # acknowledged versions: each action's event count
            events_per_s = sum(a["ack"] - a["base"] for a in in_window if a["ack"]) / duration
        srv_cpu, gen_cpu, pg_cpu = sampler.cpu_percent(t0, t1)
        return RunResult(
            db=db_kind, games=games, duration=duration, sockets=2 * games,
            actions=len(in_window), lat_ms=quantiles(lat), ack_ms=quantiles(ack),
            events_per_s=events_per_s, actions_per_s=len(in_window) / duration,
            server_cpu=srv_cpu, gen_cpu=gen_cpu,
            pg_cpu=pg_cpu if db_kind == "postgres" else math.nan,
            peak_rss_mb=sampler.peak_rss / 2**20,
            errors=sum(errors.values()), error_kinds=dict(errors),
            lost=verdict.lost, dup=verdict.dup, details=dict(verdict.details),
            games_done=sum(r["games_done"] for r in results),
            start_p99_ms=quantiles([x for r in results for x in r["start_latencies"]])["p99"],
            loop_lag_p99_ms=quantiles([x for r in results for x in r["loop_lags"]])["p99"],
            gen_gc2=_gc2([p for r in results for p in r.get("gc_pauses", [])]),
            start_phases=_start_phases([p for r in results for p in r.get("start_phases", [])], t0, t1),
            load=sampler.load_during(t0, t1),
            db_checked=verdict.db_checked,
        )
    finally:
        if server is not None:
            server.stop()
            if args.keep_logs:
                print(f"server log: {server.log_path}", file=sys.stderr)
        if db is not None and not args.keep_db:
            db.drop()


# =========================================================================== report


def _start_phases(phases: list, t0: float, t1: float) -> dict:
    """Where a game start's time goes, for games asked for during the ramp and in the window:
    the admin POST (creation), the two sockets' connect (upgrade, hello, join), the first
    views out of the waiting phase."""
    out = {}
    for part, keep in (("ramp", lambda t: t < t0), ("window", lambda t: t0 <= t < t1)):
        rows = [p for p in phases if keep(p[0])]
        out[part] = {"n": len(rows)} | {
            name: quantiles([p[i] for p in rows]) if i else quantiles([p[1] + p[2] + p[3] for p in rows])
            for i, name in ((0, "total"), (1, "post"), (2, "sockets"), (3, "views"))
        }
    return out


def _gc2(pauses: list) -> tuple[int, float, float]:
    full = [d * 1000 for g, d in pauses if g == 2]
    return (len(full), max(full, default=0.0), sum(full))


def fmt(x: float, nd: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def report(runs: list[RunResult], baselines: dict[str, RunResult]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(200, shutil.get_terminal_size((200, 40)).columns))
    t = Table(title="MultiRef Live websocket load (latency: send -> partner receives the state frame)")
    for col in ("db", "games", "sockets", "actions", "p50 ms", "p95 ms", "p99 ms", "max ms",
                "events/s", "server CPU%", "peak RSS MB", "errors", "lost", "dup",
                "p99 vs base", "ev/s vs base"):
        t.add_column(col, justify="left" if col == "db" else "right")
    for r in runs:
        base = baselines.get(r.db)
        ratio_p99 = ratio_ev = "-"
        if base is not None and base is not r:
            ratio_p99 = f"{r.lat_ms['p99'] / base.lat_ms['p99']:.2f}x" if base.lat_ms["p99"] else "-"
            ratio_ev = f"{r.events_per_s / base.events_per_s:.2f}x" if base.events_per_s else "-"
        elif base is r:
            ratio_p99 = ratio_ev = "base"
        t.add_row(
            r.db, str(r.games), str(r.sockets), str(r.actions), fmt(r.lat_ms["p50"]),
            fmt(r.lat_ms["p95"]), fmt(r.lat_ms["p99"]), fmt(r.lat_ms["max"]), fmt(r.events_per_s),
            fmt(r.server_cpu, 0), fmt(r.peak_rss_mb, 0),
            str(r.errors), str(r.lost), str(r.dup), ratio_p99, ratio_ev,
        )
    console.print(t)
    d = Table(title="Diagnostics")
    for col in ("db", "games", "actions/s", "games done", "srv CPU ms/action", "ack p99 ms", "start p99 ms",
                "gen loop lag p99 ms", "gen full GCs (max, total ms)", "gen CPU%", "pg CPU% (all)", "load avg (1m, max)",
                "log checked", "error kinds", "lost/dup details"):
        d.add_column(col, justify="left" if col in ("db", "error kinds", "lost/dup details") else "right")
    for r in runs:
        d.add_row(
            r.db, str(r.games), fmt(r.actions_per_s), str(r.games_done),
            fmt(cpu_per_action(r), 2),
            fmt(r.ack_ms["p99"]),
            fmt(r.start_p99_ms), fmt(r.loop_lag_p99_ms),
            f"{r.gen_gc2[0]} ({r.gen_gc2[1]:.0f}, {r.gen_gc2[2]:.0f})", fmt(r.gen_cpu, 0), fmt(r.pg_cpu, 0),
            fmt(r.load, 2), "yes" if r.db_checked else "no",
            ", ".join(f"{k}={v}" for k, v in sorted(r.error_kinds.items())) or "-",
            ", ".join(f"{k}={v}" for k, v in sorted(r.details.items()) if v) or "-",
        )
    console.print(d)
    g = Table(title="Game starts: where the time goes, p50 / p99 ms (POST: the admin route creates the "
              "game; sockets: both connect, hello, join; views: both leave 'waiting')")
    for col in ("db", "games", "asked", "n", "total", "POST", "sockets", "views"):
        g.add_column(col, justify="left" if col == "db" else "right")
    for r in runs:
        for part, q in r.start_phases.items():
            cells = [f"{fmt(q[k]['p50'])} / {fmt(q[k]['p99'])}" for k in ("total", "post", "sockets", "views")]
            g.add_row(r.db, str(r.games), part, str(q["n"]), *cells)
    console.print(g)
    floors = {r.games: r for r in runs if r.db == FLOOR}
    if floors:
        f = Table(title="Against the floor (bench/floor_relay.py: parse, one SQLite row, a small frame "
                  "to each seat), same generator, pace and machine, in this invocation")
        for col in ("db", "games", "srv CPU ms/action", "floor ms/action", "CPU/action vs floor",
                    "p99 ms", "floor p99 ms", "p99 vs floor", "start p99 ms", "floor start p99 ms"):
            f.add_column(col, justify="left" if col == "db" else "right")
        for r in runs:
            fl = floors.get(r.games)
            if fl is None or r is fl:
                continue
            cpu, fcpu = cpu_per_action(r), cpu_per_action(fl)
            f.add_row(
                r.db, str(r.games), fmt(cpu, 2), fmt(fcpu, 2), fmt(cpu / fcpu if fcpu else math.nan, 2) + "x",
                fmt(r.lat_ms["p99"]), fmt(fl.lat_ms["p99"]),
                fmt(r.lat_ms["p99"] / fl.lat_ms["p99"] if fl.lat_ms["p99"] else math.nan, 2) + "x",
                fmt(r.start_p99_ms), fmt(fl.start_p99_ms),
            )
        console.print(f)


def cpu_per_action(r: RunResult) -> float:
    """Server CPU milliseconds per action (server CPU% is 100 per busy core)."""
    return 10 * r.server_cpu / r.actions_per_s if r.actions_per_s else math.nan


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--games", type=int, default=500, help="concurrent games (2 sockets each)")
    p.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--duration", type=float, default=60, help="measurement window, seconds")
    p.add_argument("--baseline-games", type=int, default=50, help="0: no baseline run")
    p.add_argument("--baseline-duration", type=float, default=None,
                   help="default: min(duration, 30)")
    p.add_argument("--ramp", type=float, default=None,
                   help="seconds over which the games start (default games/50, at least 2)")
    p.add_argument("--settle", type=float, default=5.0, help="seconds after the ramp before measuring")
    p.add_argument("--speak-delay", type=float, nargs=2, default=(1.0, 2.0), metavar=("MIN", "MAX"),
                   help="speaker's think time after its turn starts")
    p.add_argument("--click-gap", type=float, nargs=2, default=(0.25, 0.35), metavar=("MIN", "MAX"),
                   help="listener's time before each click and before submitting")
    p.add_argument("--targets-per-turn", type=int, default=1,
                   help="missing targets the speaker names per message")
    p.add_argument("--wrong-click-rate", type=float, default=0.25,
                   help="chance per turn that the listener also clicks a wrong image")
    p.add_argument("--action-timeout", type=float, default=15.0)
    p.add_argument("--procs", type=int, default=1, help="load generator processes")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--gen-gc", action="store_true",
                   help="let the generator's cyclic garbage collector run in the measurement window "
                   "(its pauses then count as latency; before issue 14's third pass it always ran)")
    p.add_argument("--url", default=None, help="target a running server instead of starting one")
    p.add_argument("--database-url", default=None, help="with --url: its database, to verify the log")
    p.add_argument("--server-pid", type=int, default=None, help="with --url: pid to sample")
    p.add_argument("--admin-token", default=None, help=f"default {ADMIN_TOKEN} (or MULTIREF_ADMIN_TOKEN with --url)")
    p.add_argument("--pg-dsn", default=PG_ADMIN_DSN, help="PostgreSQL where fresh databases are made")
    p.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the started server (repeatable)")
    p.add_argument("--py-spy", default=None, metavar="PREFIX",
                   help="record the server with py-spy (raw collapsed stacks) during the window")
    p.add_argument("--server-wrapper", default=None, metavar="SCRIPT",
                   help="start the server as `python SCRIPT` (e.g. a profiler around app.cli); it gets "
                   "SIGUSR1 when the measurement window opens and SIGUSR2 when it closes")
    p.add_argument("--floor", action="store_true",
                   help="also run bench/floor_relay.py (a minimal durable relay on the same stack) at "
                   "each size, and report server CPU per action and p99 as multiples of it")
    p.add_argument("--keep-db", action="store_true")
    p.add_argument("--keep-logs", action="store_true")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.admin_token is None:
        args.admin_token = os.environ.get("MULTIREF_ADMIN_TOKEN", ADMIN_TOKEN) if args.url else ADMIN_TOKEN
    if args.ramp is None:
        args.ramp = max(2.0, args.games / 50)
    base_duration = args.baseline_duration or min(args.duration, 30)
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    if args.url:
        dbs = [dbs[0] if args.db != "both" else "server"]
    plan = []
    if args.baseline_games and args.baseline_games < args.games:
        plan += [(db, args.baseline_games, base_duration) for db in dbs]
    plan += [(db, args.games, args.duration) for db in dbs]
    if args.floor and not args.url:  # the floor first at each size, then the servers
        sizes = list(dict.fromkeys(games for _, games, _ in plan))
        plan = [p for n in sizes for p in ([(FLOOR, n, next(d for _, g, d in plan if g == n))]
                                           + [q for q in plan if q[1] == n])]
    runs: list[RunResult] = []
    baselines: dict[str, RunResult] = {}
    workdir = Path(tempfile.mkdtemp(prefix="mr-bench-"))
    try:
        for db, games, duration in plan:
            print(
                f"[{time.strftime('%H:%M:%S')}] {db}: {games} games, {duration:.0f}s "
                f"(load avg {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True,
            )
            r = run_once(args, db, games, duration, workdir)
            runs.append(r)
            if db != FLOOR and (games == args.baseline_games or db not in baselines):
                baselines.setdefault(db, r)
            print(
                f"    p99={fmt(r.lat_ms['p99'])}ms events/s={fmt(r.events_per_s)} "
                f"cpu={fmt(r.server_cpu, 0)}% errors={r.errors} lost={r.lost} dup={r.dup}",
                file=sys.stderr, flush=True,
            )
    finally:
        if not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
    report(runs, baselines)
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in runs], indent=2, default=str))
    for r in runs:
        print(f"games={r.games} p99_ms={fmt(r.lat_ms['p99'])} lost={r.lost} dup={r.dup}")
    return 0 if all(r.lost == 0 and r.dup == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
