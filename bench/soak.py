"""Soak test: many concurrent bot games for a long time against real server processes, watching
memory, latency and errors minute by minute.

    .venv/bin/python bench/soak.py                         # 200 games, 2 minutes, one server, SQLite
    .venv/bin/python bench/soak.py --long                  # 200 games, 30 minutes (the release check)
    .venv/bin/python bench/soak.py --servers 2 --db postgres --minutes 10

It starts the server process(es) itself (``python -m app.cli serve``) on a fresh database: a
SQLite file in a temporary folder, or (``--db postgres``) a new database on the test PostgreSQL
server (``MULTIREF_TEST_PG``, dropped afterwards), or the one named by ``--database-url``. With
several servers, each game's speaker and listener connect to different processes (LISTEN/NOTIFY).

Each of the ``--games`` slots plays games back to back: a game is made through
``POST /api/admin/games``, two bots (``app.bot.BotClient``) take the seats and play scripted
turns, waiting ``--think`` seconds (±50%, seeded) before each action as people do. Rules are
stretched so that nothing times out.

Measured and printed:

* latency of every action (message, click, submit): from its send to the moment the PARTNER's
  socket delivers the first view at a newer version; percentiles per minute;
* errors: error frames by code, exceptions by kind, games that did not finish;
* memory: RSS of every server process and of this process, sampled every ``--sample`` seconds;
  growth = (median of the last 3 samples) / (median of the first 3 after the warm-up) - 1, goal
  under ``--max-growth`` (5%);
* at the end, the consistency checker over every game played (``app.db.checker``).

The last line is a summary: ``soak: games=… actions=… p50_ms=… p99_ms=… errors=… growth=… verdict=PASS``.
The exit status is 0 on PASS, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402

from app.bot import BotClient, BotError, parse_scripted, scripted_utterance  # noqa: E402
from app.processes import ServerProcess  # noqa: E402

ADMIN_TOKEN = "soak-admin-" + uuid.uuid4().hex[:12]
PG_ADMIN_DSN = os.environ.get("MULTIREF_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REFERENCE_TANGRAMS = ROOT.parent / "shared" / "reference" / "kilogram" / "tangrams-svg"
STRETCHED_RULES = {
    "MULTIREF_RULES__TURN_SECONDS": "7200",
    "MULTIREF_RULES__SPEAKER_SECONDS": "3600",
    "MULTIREF_RULES__JOIN_TIMEOUT_SECONDS": "3600",
    "MULTIREF_RULES__DISCONNECT_GRACE_SECONDS": "3600",
}
RESERVOIR = 50_000


# ---------------------------------------------------------------- servers and database


def start_server(
    database_url: str, tangrams: Path | None, log_dir: Path,
    extra_env: dict[str, str] | None = None, wrapper: str | None = None,
) -> ServerProcess:
    env = {
        "MULTIREF_ADMIN_TOKEN": ADMIN_TOKEN,
        "MULTIREF_MAX_CONNECTIONS_PER_ADDRESS": "0",
        **({"MULTIREF_TANGRAMS": str(tangrams)} if tangrams else {}),
        **STRETCHED_RULES,
        **(extra_env or {}),
    }
    command = [sys.executable, wrapper] if wrapper else None
    try:
        return ServerProcess(database_url, log_dir, env=env, command=command).start(timeout=90)
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None


def _pg_exec(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(PG_ADMIN_DSN)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


# ---------------------------------------------------------------- measurements


@dataclass
class Minute:
    latencies: list[float] = field(default_factory=list)
    actions: int = 0
    games: int = 0
    errors: Counter = field(default_factory=Counter)
    rss: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


class Stats:
    def __init__(self, start: float, seed: int) -> None:
        self.start = start
        self.minutes: dict[int, Minute] = defaultdict(Minute)
        self.reservoir: list[float] = []
        self.seen = 0
        self.rng = random.Random(seed)
        self.errors: Counter = Counter()
        self.games = 0
        self.unfinished = 0
        self.actions = 0
        self.samples: dict[str, list[tuple[float, float]]] = defaultdict(list)  # name -> (t, MB)

    def minute(self, t: float | None = None) -> Minute:
        return self.minutes[int(((t or time.time()) - self.start) // 60)]

    def latency(self, seconds: float, at: float) -> None:
        ms = seconds * 1000.0
        self.minute(at).latencies.append(ms)
        self.seen += 1
        if len(self.reservoir) < RESERVOIR:
            self.reservoir.append(ms)
        else:
            j = self.rng.randrange(self.seen)
            if j < RESERVOIR:
                self.reservoir[j] = ms

    def error(self, kind: str) -> None:
        self.errors[kind] += 1
        self.minute().errors[kind] += 1

    def close_minute(self, index: int) -> None:
        """Keep only the percentiles of a finished minute (bounded memory over long runs)."""
        m = self.minutes.get(index)
        if m is not None and isinstance(m.latencies, list):
            m.latencies = percentiles(m.latencies)  # type: ignore[assignment]


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return {"n": len(ordered), "p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "max": ordered[-1]}


# ---------------------------------------------------------------- the games


class Soak:
    def __init__(self, args, servers: list[ServerProcess]) -> None:
        self.args = args
        self.servers = servers
        self.stats = Stats(time.time(), args.seed)
        self.rng = random.Random(args.seed)
        self.stop_at = self.stats.start + args.minutes * 60
        self.http: httpx.AsyncClient | None = None

    async def think(self) -> None:
        t = self.args.think
        if t > 0:
            await asyncio.sleep(self.rng.uniform(0.5 * t, 1.5 * t))

    async def run(self) -> None:
        self.http = httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=50))
        sampler = asyncio.create_task(self.sample_forever())
        printer = asyncio.create_task(self.print_minutes())
        slots = [asyncio.create_task(self.slot(i)) for i in range(self.args.games)]
        await asyncio.gather(*slots)
        sampler.cancel()
        printer.cancel()
        await self.sample()  # one last sample after the load
        await self.http.aclose()

    async def slot(self, i: int) -> None:
        await asyncio.sleep(self.rng.uniform(0, min(10.0, self.args.minutes * 6)))  # ramp up
        while time.time() < self.stop_at:
            try:
                await self.game(i)
            except Exception as exc:  # noqa: BLE001 - counted, the slot goes on
                self.stats.error(f"exception:{type(exc).__name__}")
                self.stats.unfinished += 1
                await asyncio.sleep(1.0)

    async def game(self, i: int) -> None:
        n = len(self.servers)
        home, away = self.servers[i % n], self.servers[(i + 1) % n]
        r = await self.http.post(
            home.url + "/api/admin/games", json={"listener": "human"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        if r.status_code != 200:
            self.stats.error(f"http:{r.status_code}")
            raise BotError(f"create game: {r.status_code}")
        created = r.json()
        pending: dict[str, list[tuple[int, float]]] = {"speaker": [], "listener": []}

        def partner_saw(seat_of_sender: str):
            def on_state(view, received_at: float) -> None:
                waiting = pending[seat_of_sender]
                while waiting and waiting[0][0] < view.version:
                    _, sent_at = waiting.pop(0)
                    self.stats.latency(received_at - sent_at, received_at)
            return on_state

        speaker = BotClient(home.url, created["speaker_token"])
        listener = BotClient(away.url, created["listener_token"])
        speaker.on_state = partner_saw("listener")  # the speaker sees the listener's actions
        listener.on_state = partner_saw("speaker")
        try:
            await speaker.connect()
            await listener.connect()
            await asyncio.gather(
                self.play(speaker, "speaker", pending), self.play(listener, "listener", pending)
            )
            self.stats.games += 1
            self.stats.minute().games += 1
        except (BotError, OSError, asyncio.TimeoutError) as exc:
            self.stats.unfinished += 1
            self.stats.error(f"game:{type(exc).__name__}")
        finally:
            for bot in (speaker, listener):
                for e in bot.errors:
                    self.stats.error(f"frame:{e.code}")
                try:
                    await bot.close()
                except Exception:  # noqa: BLE001
                    pass

    async def act(self, bot: BotClient, seat: str, pending, action) -> None:
        await self.think()
        pending[seat].append((bot.view.version, time.time()))
        self.stats.actions += 1
        self.stats.minute().actions += 1
        await action()

    async def play(self, bot: BotClient, seat: str, pending) -> None:
        """Scripted play of one seat: the speaker names two missing targets a turn, the listener
        follows (clicks one by one, then submits)."""
        timeout = 60 + 4 * self.args.think
        while True:
            view = await bot.wait_for(
                lambda b: b.view and (
                    b.view.phase == "ended"
                    or (seat == "speaker" and b.view.phase == "speaking")
                    or (seat == "listener" and b.view.phase == "selecting" and not b.view.turn_submitted)
                ) and b.view,
                timeout,
            )
            if view.phase == "ended":
                return
            if seat == "speaker":
                await self.act(bot, seat, pending, lambda: bot.say(scripted_utterance(bot.view)))
                await bot.wait_for(lambda b: b.view.phase != "speaking" or b.view.turn != view.turn, timeout)
                continue
            text = next((m.text for m in reversed(view.messages) if m.turn == view.turn), "")
            deselect, select = parse_scripted(text, {t.tangram_id for t in view.tiles})
            current = {t.tangram_id for t in view.tiles if t.selected}
            wanted = (current - deselect) | select
            for tid in sorted(current - wanted) + sorted(wanted - current):
                await self.act(bot, seat, pending, lambda tid=tid: bot.click(tid))
            await self.act(bot, seat, pending, bot.submit)

    # ------------------------------------------------------------ memory

    def processes(self) -> dict[str, psutil.Process]:
        procs = {"soak": psutil.Process()}
        for k, s in enumerate(self.servers):
            if s.proc is not None:
                procs[f"server{k + 1}"] = psutil.Process(s.proc.pid)
        return procs

    async def sample(self) -> None:
        now = time.time()
        for name, p in self.processes().items():
            try:
                mb = p.memory_info().rss / 2**20
            except psutil.Error:
                self.stats.error(f"process_gone:{name}")
                continue
            self.stats.samples[name].append((now, mb))
            self.stats.minute(now).rss[name].append(mb)

    async def sample_forever(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(self.args.sample)

    async def print_minutes(self) -> None:
        printed = 0
        print(header(self.processes()), flush=True)
        while True:
            await asyncio.sleep(5)
            current = int((time.time() - self.stats.start) // 60)
            while printed < current:
                self.stats.close_minute(printed)
                print(row(printed, self.stats.minutes[printed], self.processes()), flush=True)
                printed += 1


def header(procs) -> str:
    mem = " ".join(f"{n + ' MB':>11}" for n in procs)
    return f"{'min':>4} {'games':>6} {'actions':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7}  {mem}"


def row(index: int, m: Minute, procs, label: str | None = None) -> str:
    lat = m.latencies if isinstance(m.latencies, dict) else percentiles(m.latencies)
    cell = lambda k: f"{lat[k]:8.1f}" if k in lat else f"{'-':>8}"  # noqa: E731
    mem = " ".join(f"{(m.rss[n][-1] if m.rss.get(n) else float('nan')):11.1f}" for n in procs)
    return (
        f"{label or index + 1:>4} {m.games:>6} {m.actions:>8} {cell('p50')} {cell('p90')} {cell('p99')} "
        f"{cell('max')} {sum(m.errors.values()):>7}  {mem}"
    )


def growth(samples: list[tuple[float, float]], after: float) -> tuple[float, float, float] | None:
    """(baseline MB, final MB, growth) from the samples after the warm-up."""
    steady = [mb for t, mb in samples if t >= after]
    if len(steady) < 4:
        return None
    base = statistics.median(steady[:3])
    final = statistics.median(steady[-3:])
    return base, final, final / base - 1.0


async def check_database(url: str) -> tuple[int, list[str]]:
    from app.db.checker import check_games
    from app.db.database import Database

    db = Database(url)
    try:
        report = await check_games(db)
    finally:
        await db.close()
    return report.games, report.mismatches


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--games", type=int, default=200, help="concurrent games (default 200)")
    ap.add_argument("--minutes", type=float, default=2.0, help="duration (default 2)")
    ap.add_argument("--long", action="store_true", help="the long mode: 30 minutes")
    ap.add_argument("--servers", type=int, default=1, help="server processes (more than 1 needs PostgreSQL)")
    ap.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--database-url", default=None, help="use this database instead of a fresh one")
    ap.add_argument("--think", type=float, default=1.0, help="mean seconds before each action (default 1.0)")
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples (default 5)")
    ap.add_argument("--warmup", type=float, default=None, help="seconds of warm-up (default: 25%% of the run, between 60 and 300)")
    ap.add_argument("--max-growth", type=float, default=0.05, help="allowed RSS growth after warm-up (default 0.05)")
    ap.add_argument("--tangrams", type=Path, default=REFERENCE_TANGRAMS if REFERENCE_TANGRAMS.is_dir() else None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the server process(es), repeatable")
    ap.add_argument("--server-wrapper", default=None, metavar="SCRIPT",
                    help="run the server as `python SCRIPT` (a probe such as bench/mem_probe.py)")
    args = ap.parse_args(argv)
    extra_env = dict(kv.split("=", 1) for kv in args.server_env)
    if args.long:
        args.minutes = 30.0
    warmup = args.warmup if args.warmup is not None else min(300.0, max(60.0, 0.25 * args.minutes * 60))
    if args.servers > 1 and args.db == "sqlite" and not args.database_url:
        ap.error("several servers share one database: use --db postgres or --database-url")

    workdir = Path(tempfile.mkdtemp(prefix="mr-soak-"))
    dropped_db = None
    if args.database_url:
        url = args.database_url
    elif args.db == "postgres":
        dropped_db = f"mr_soak_{uuid.uuid4().hex[:10]}"
        _pg_exec(f'CREATE DATABASE "{dropped_db}"')
        url = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1) + "/" + dropped_db
    else:
        url = f"sqlite+aiosqlite:///{workdir / 'soak.sqlite3'}"

    servers: list[ServerProcess] = []
    try:
        for _ in range(args.servers):
            servers.append(start_server(url, args.tangrams, workdir, extra_env, args.server_wrapper))
        kind = url.split(":", 1)[0].split("+")[0]
        print(
            f"soak: {args.games} games, {args.minutes:g} min, {len(servers)} server(s) on {kind}, "
            f"think {args.think:g}s, warm-up {warmup:.0f}s, RSS every {args.sample:g}s; logs in {workdir}",
            flush=True,
        )
        soak = Soak(args, servers)
        asyncio.run(soak.run())
        stats = soak.stats
        last = max(stats.minutes) if stats.minutes else -1
        print("\nper minute (\"end\": games in flight at the stop, played to their end):")
        print(header(soak.processes()))
        for index in range(last + 1):
            label = "end" if index >= args.minutes else None
            print(row(index, stats.minutes[index], soak.processes(), label))
        games_checked, mismatches = asyncio.run(check_database(url))
        after = stats.start + warmup
        verdict = True
        print()
        print(f"{'process':>10} {'warm MB':>9} {'final MB':>9} {'growth':>8}")
        growths = []
        for name, samples in stats.samples.items():
            g = growth(samples, after)
            if g is None:
                print(f"{name:>10} {'-':>9} {'-':>9} {'n/a':>8}")
                continue
            base, final, rel = g
            growths.append(f"{name}={rel * 100:+.1f}%")
            verdict &= rel < args.max_growth
            print(f"{name:>10} {base:9.1f} {final:9.1f} {rel * 100:+7.1f}%")
        total = percentiles(stats.reservoir)
        alive = all(s.proc.poll() is None for s in servers)
        verdict &= alive and not mismatches and stats.games > 0
        errors = sum(stats.errors.values())
        print()
        print(f"errors by kind: {dict(stats.errors.most_common()) or 'none'}")
        print(f"checker: {games_checked} games, {len(mismatches)} mismatches{': ' + mismatches[0] if mismatches else ''}")
        print(
            f"soak: games={stats.games} unfinished={stats.unfinished} actions={stats.actions} "
            f"minutes={args.minutes:g} servers={len(servers)} db={kind} "
            f"p50_ms={total.get('p50', float('nan')):.1f} p90_ms={total.get('p90', float('nan')):.1f} "
            f"p99_ms={total.get('p99', float('nan')):.1f} max_ms={total.get('max', float('nan')):.1f} "
            f"errors={errors} growth={','.join(growths) or 'n/a'} mismatches={len(mismatches)} "
            f"verdict={'PASS' if verdict else 'FAIL'}",
            flush=True,
        )
        return 0 if verdict else 1
    finally:
        for s in servers:
            s.stop()
        if dropped_db:
            try:
                _pg_exec(f'DROP DATABASE IF EXISTS "{dropped_db}" WITH (FORCE)')
            except Exception:  # noqa: BLE001
                pass


if __name__ == "__main__":
    sys.exit(main())
