"""Export benchmark: 10,000 games generated in a database, exported as JSONL and as Parquet.

    .venv/bin/python bench/export_bench.py                       # SQLite in a temp folder
    .venv/bin/python bench/export_bench.py --games 10000 --database-url postgresql+asyncpg://postgres@127.0.0.1/mr_bench

Games are made the way the server makes them: every game is played command by command through
the rules engine (``app.game.rules.step``: joins, utterances, clicks, submits; some games are
abandoned) and written with the real ``app.db.gamelog`` functions (``create_game`` then ``append``,
which write the event log and the derived rows in one transaction); model games also get their
``listener_requests`` rows (action text, probability), as a policy worker writes them. Systems
share the config queue as the lobby does (config n for a system's n-th game).

Each export runs in a fresh subprocess (``multiref export`` code path, progress bar off) so that
its peak memory is its own: peak RSS is read from ``wait4`` (``ru_maxrss``), and the Python heap
peak from ``tracemalloc`` in a second, separate run (tracing slows Python down, so times come from
the untraced run). A baseline subprocess that only imports the same modules gives the RSS floor.
The table reports time, games/s, peak RSS, heap peak and the size of each file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.db.database import Database  # noqa: E402
from app.db.gamelog import append, create_game  # noqa: E402
from app.db.models import ListenerRequest  # noqa: E402
from app.game.configs import ConfigQueue  # noqa: E402
from app.game.rules import (  # noqa: E402
    AdminEnd,
    Click,
    EndReason,
    GameCreated,
    GameRules,
    Join,
    ListenerKind,
    Rejection,
    Seat,
    SendUtterance,
    Submit,
    new_game,
    step,
)

POOL = [f"tangram-{i:04d}" for i in range(240)]
WORDS = ["bird", "boat", "house", "person", "dog", "rabbit", "letter", "arrow", "hat", "cup"]
ADJS = ["tall", "small", "sitting", "running", "upside-down", "wide", "pointy", "fat", "thin", "odd"]
FEEDBACK = ["yes!", "no, not that one.", "good,", "wrong — undo that", "great. now", "nope;", ""]


def _utterance(rng: random.Random, turn: int) -> str:
    lead = rng.choice(FEEDBACK) if turn > 1 else ""
    body = f"select the {rng.choice(ADJS)} {rng.choice(WORDS)} with a \"{rng.choice(ADJS)}\" top"
    if rng.random() < 0.05:
        body += " <b>not</b> the ü-shaped one & co"
    return (lead + " " + body).strip()


def play_game(
    game_id: str,
    config,
    kind: ListenerKind,
    rules: GameRules,
    rng: random.Random,
    t0: float,
    abandon: bool = False,
):
    """One game played command by command: (GameCreated, events after it, final state,
    model turns [(turn, action, prob)])."""
    created = GameCreated(game_id=game_id, config=config, rules=rules, listener_kind=kind, at=t0)
    state = new_game(created)
    events: list = []
    now = t0

    def do(cmd):
        nonlocal state
        state, result = step(state, cmd)
        if isinstance(result, Rejection):
            raise RuntimeError(f"{game_id}: {result}")
        events.extend(result)

    do(Join(seat=Seat.SPEAKER, at=now))
    if kind is ListenerKind.HUMAN:
        now += rng.uniform(0.2, 3)
        do(Join(seat=Seat.LISTENER, at=now))
    targets = set(config.targets)
    model_turns = []
    stop_at = rng.randint(1, 4) if abandon else None
    while not state.ended:
        if stop_at is not None and state.turn >= stop_at:
            now += rng.uniform(1, 10)
            do(AdminEnd(at=now, reason=EndReason.SPEAKER_LEFT, note=""))
            break
        now += rng.uniform(3, 25)
        do(SendUtterance(seat=Seat.SPEAKER, text=_utterance(rng, state.turn), at=now))
        selection = set(state.selection)
        wrong = selection - targets
        missing = sorted(targets - selection)
        toggles: list[str] = []
        if wrong and rng.random() < 0.6:
            toggles.append(rng.choice(sorted(wrong)))
        if missing and rng.random() < 0.75:
            toggles.extend(rng.sample(missing, k=min(len(missing), rng.choice((1, 1, 2)))))
        elif rng.random() < 0.7:
            toggles.append(rng.choice(sorted(set(config.context) - targets - selection) or sorted(config.context)))
        before = sorted(selection)
        for tid in dict.fromkeys(toggles):
            now += rng.uniform(0.3, 3)
            do(Click(seat=Seat.LISTENER, tangram_id=tid, at=now))
        now += rng.uniform(0.5, 4)
        if kind is ListenerKind.MODEL:
            after = set(state.selection)
            parts = []
            if set(before) - after:
                parts.append("deselect " + " ".join(sorted(set(before) - after)))
            if after - set(before):
                parts.append("select " + " ".join(sorted(after - set(before))))
            model_turns.append((state.turn, " ".join(parts) or "nothing", rng.uniform(0.05, 0.99)))
        do(Submit(seat=Seat.LISTENER, at=now))
    return created, events, state, model_turns


async def generate_games(
    db: Database,
    n: int,
    *,
    seed: int = 0,
    systems: tuple[str, ...] = ("B-SUP", "CONTROL", "human"),
    round_: int | None = 1,
    start: float | None = None,
    abandon_rate: float = 0.1,
    live: int = 0,
    batch: int = 100,
    pool: list[str] | None = None,
    progress=None,
) -> list[str]:
    """``n`` finished games (plus ``live`` unfinished ones), written through the game log."""
    rng = random.Random(seed)
    rules = GameRules()
    queue = ConfigQueue(pool or POOL, seed, rules)
    index = {s: 0 for s in systems}
    t = start if start is not None else time.time() - 30 * 24 * 3600
    ids: list[str] = []
    pending = []
    total = n + live
    for i in range(total):
        system = systems[i % len(systems)]
        kind = ListenerKind.HUMAN if system == "human" else ListenerKind.MODEL
        config = queue.config(index[system])
        game_id = f"g{seed:03d}x{i:07d}"
        t += rng.uniform(5, 40)
        created, events, state, model_turns = play_game(
            game_id, config, kind, rules, rng, t, abandon=rng.random() < abandon_rate
        )
        if i >= n:  # keep only the start of the game: it is still being played
            cut = max(1, len(events) // 2)
            events = events[:cut]
            state = new_game(created)
            from app.game.rules import evolve

            for e in events:
                state = evolve(state, e)
            model_turns = [m for m in model_turns if m[0] < state.turn]
        pending.append((system, index[system], created, events, state, model_turns))
        index[system] += 1
        ids.append(game_id)
        if len(pending) >= batch or i == total - 1:
            await _write(db, pending, round_)
            pending = []
            if progress:
                progress(i + 1, total)
    return ids


async def _write(db: Database, games, round_) -> None:
    async with db.session() as s, s.begin():
        for system, idx, created, events, state, model_turns in games:
            checkpoint = None if system == "human" else f"{system}-r{round_}-bench"
            first = await create_game(
                s, created, system=system, round=round_, checkpoint=checkpoint, split="dev",
                config_index=idx, source="live",
            )
            if events:
                await append(s, first, events, state, actor="bench")
            for turn, action, prob in model_turns:
                s.add(
                    ListenerRequest(
                        game_id=created.game_id, turn=turn, system=system, checkpoint=checkpoint,
                        status="applied", created_at=created.at, deadline=created.at + 30,
                        attempts=1, action=action, prob_action=prob, prob_unconstrained=prob * 0.9,
                        latency_s=0.2, worker_id="bench",
                    )
                )


# ---------------------------------------------------------------- measuring


CHILD = r"""
import asyncio, json, sys, time, tracemalloc
sys.path.insert(0, {root!r})
from pathlib import Path
from app.db.database import Database
from app.export import export, ExportFilter
trace = {trace!r}
async def main():
    db = Database({url!r})
    if trace:
        tracemalloc.start()
    t = time.perf_counter()
    report = await export(db, Path({out!r}), {fmt!r}, ExportFilter())
    seconds = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1] if trace else None
    await db.close()
    print(json.dumps({{"seconds": seconds, "games": report.games, "rows": report.rows,
                      "sizes": report.sizes(), "heap_peak": peak}}))
asyncio.run(main())
"""

BASELINE = r"""
import sys
sys.path.insert(0, {root!r})
import app.export, app.db.database, sqlalchemy.ext.asyncio
if {fmt!r} == "parquet":
    import pyarrow.parquet
"""


def _child(code: str) -> tuple[dict | None, int]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(err.decode()[-3000:])
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    return (json.loads(lines[-1]) if lines else None), usage.ru_maxrss * 1024


def measure(url: str, fmt: str, out: Path) -> dict:
    result, rss = _child(CHILD.format(root=str(ROOT), url=url, out=str(out / fmt), fmt=fmt, trace=False))
    traced, _ = _child(CHILD.format(root=str(ROOT), url=url, out=str(out / f"{fmt}-traced"), fmt=fmt, trace=True))
    result["rss_peak"] = rss
    result["heap_peak"] = traced["heap_peak"]
    return result


def _mib(n: int | None) -> str:
    return "–" if n is None else f"{n / 2**20:.1f}"


async def _generate(url: str, games: int, live: int) -> float:
    db = Database(url)
    await db.migrate()
    t = time.perf_counter()
    last = [0.0]

    def progress(done, total):
        if time.perf_counter() - last[0] > 5 or done == total:
            last[0] = time.perf_counter()
            print(f"  generated {done}/{total} games ({time.perf_counter() - t:.0f} s)", flush=True)

    await generate_games(db, games, live=live, progress=progress)
    await db.close()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--games", type=int, default=10_000)
    ap.add_argument("--live", type=int, default=50, help="unfinished games (not exported)")
    ap.add_argument("--database-url", help="use this (empty) database instead of a temp SQLite file")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder")
    ap.add_argument("--formats", default="jsonl,parquet")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mr-export-bench-"))
    url = args.database_url or f"sqlite+aiosqlite:///{tmp / 'bench.sqlite3'}"
    print(f"generating {args.games:,} games (+{args.live} live) in {url.split('@')[-1]}")
    gen_seconds = asyncio.run(_generate(url, args.games, args.live))
    print(f"generated in {gen_seconds:.1f} s")
    rows = []
    for fmt in args.formats.split(","):
        print(f"exporting {fmt} …", flush=True)
        _, floor = _child(BASELINE.format(root=str(ROOT), fmt=fmt))
        rows.append((fmt, measure(url, fmt, tmp), floor))
    print()
    print(f"export of {args.games:,} games from {url.split('+')[0]} (sizes in MB; RSS floor = a process that only imports the export code)")
    head = (f"{'format':8} {'games':>6} {'time s':>7} {'games/s':>8} {'peak RSS MiB':>13} {'RSS floor MiB':>14} "
            f"{'heap peak MiB':>14} {'interaction MB':>15} {'turn MB':>8} {'events MB':>10}")
    print(head)
    print("-" * len(head))
    for fmt, r, floor in rows:
        sz = r["sizes"]
        print(
            f"{fmt:8} {r['games']:>6} {r['seconds']:>7.1f} {r['games'] / r['seconds']:>8.0f} "
            f"{_mib(r['rss_peak']):>13} {_mib(floor):>14} {_mib(r['heap_peak']):>14} "
            f"{sz['interaction'] / 1e6:>15.2f} {sz['turn'] / 1e6:>8.2f} {sz['events'] / 1e6:>10.2f}"
        )
    print(f"rows: {rows[0][1]['rows']}")
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"kept {tmp}")


if __name__ == "__main__":
    main()
