"""Where the server's event loop stalls: a ``--server-wrapper`` for bench/ws_load.py.

    PYTHONPATH=. .venv/bin/python bench/ws_load.py --db sqlite --games 500 --baseline-games 0 \\
        --server-wrapper bench/loop_probe.py --server-env LOOP_PROBE_OUT=var/probe.sqlite.json

Runs ``app.cli.main()`` (the server) with three probes, counted only inside the measurement
window (SIGUSR1 opens it, SIGUSR2 closes it and writes ``LOOP_PROBE_OUT`` as JSON):

* every cyclic garbage collection (``gc.callbacks``): generation, pause, objects collected;
* loop lag: a task that sleeps 2 ms and records how late it wakes (a stall of the loop: one
  callback running long, or many in one iteration);
* optionally (``LOOP_PROBE_GC``: ``freeze``, ``T0,T1,T2`` or ``freeze;T0,T1,T2``) the
  collector tuned two seconds after startup, to compare settings without changing the server;
* ``LOOP_PROBE_CREATORS``: PostgreSQL game creations holding a pool connection at once;
* how long the event store's commits and game creations take, and on PostgreSQL the wait for
  a pool connection (p50, p99, max);
* a watchdog thread that, while the lag task has not run for over ``LOOP_PROBE_STALL_MS``
  (default 20), takes the main thread's stack every few milliseconds: what the loop is doing
  during its stalls (a stack per sample, counted by its innermost frames from the app).

The probes cost a little CPU (a wake-up every 2 ms, a thread polling every 2 ms), so compare
CPU per action without the wrapper.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import os
import signal
import sys
import threading
import time
import traceback

STALL_S = float(os.environ.get("LOOP_PROBE_STALL_MS", "20")) / 1000
OUT = os.environ.get("LOOP_PROBE_OUT", "loop_probe.json")


class Probe:
    def __init__(self) -> None:
        self.on = False
        self.t0 = self.t1 = 0.0
        self.gcs: list[tuple[float, int, float, int]] = []  # (t, generation, pause s, collected)
        self.lags: list[float] = []
        self.stalls: list[tuple[float, float]] = []  # (t start, duration s) of lags > STALL_S
        self.stacks: collections.Counter[str] = collections.Counter()
        self.gc_in_stall = 0
        self._gc_start = 0.0
        self.beat = time.perf_counter()
        self.main_id = threading.get_ident()
        self.in_gc = False
        self.tuned = ""
        self.timings: collections.defaultdict[str, list[float]] = collections.defaultdict(list)

    # ---------------------------------------------------------------- gc
    def gc_callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
            self.in_gc = True
            return
        self.in_gc = False
        if self.on:
            self.gcs.append((self._gc_start, info["generation"], time.perf_counter() - self._gc_start,
                             info.get("collected", 0)))

    # ---------------------------------------------------------------- loop lag
    async def lag_task(self) -> None:
        tune = os.environ.get("LOOP_PROBE_GC", "")  # "freeze", "T0,T1,T2" or both ("freeze;T0,T1,T2")
        if tune:
            await asyncio.sleep(2.0)  # the app's startup (lifespan) is done
            for part in tune.split(";"):
                if part == "freeze":
                    gc.collect()
                    gc.freeze()
                elif part:
                    gc.set_threshold(*(int(x) for x in part.split(",")))
            self.tuned = f"{tune} (frozen {gc.get_freeze_count()})"
        while True:
            t = time.perf_counter()
            self.beat = t
            await asyncio.sleep(0.002)
            now = time.perf_counter()
            self.beat = now
            lag = now - t - 0.002
            if self.on:
                self.lags.append(lag)
                if lag > STALL_S:
                    self.stalls.append((t, lag))

    # ---------------------------------------------------------------- watchdog
    def watchdog(self) -> None:
        while True:
            time.sleep(0.002)
            if not self.on:
                continue
            if time.perf_counter() - self.beat > STALL_S:
                frame = sys._current_frames().get(self.main_id)
                if frame is None:
                    continue
                if self.in_gc:
                    self.stacks["<cyclic gc>"] += 1
                    continue
                frames = traceback.extract_stack(frame)
                app = [f for f in frames if "/app/" in f.filename or "/bench/" in f.filename]
                inner = frames[-1]
                key = " <- ".join(
                    f"{os.path.basename(f.filename)}:{f.name}:{f.lineno}" for f in reversed(app[-4:])
                ) or "(no app frame)"
                key += f"  @ {os.path.basename(inner.filename)}:{inner.name}"
                self.stacks[key] += 1

    # ---------------------------------------------------------------- window
    def census(self) -> None:
        """Ten seconds of the window with every collected object kept (``gc.DEBUG_SAVEALL``):
        the types of the cyclic garbage, and what refers to the most common ones' cycles."""
        gc.set_debug(gc.DEBUG_SAVEALL)
        time.sleep(10)
        gc.set_debug(0)
        garbage = list(gc.garbage)
        gc.garbage.clear()
        types = collections.Counter(type(o).__qualname__ + " " + getattr(type(o), "__module__", "") for o in garbage)
        # frames and functions in garbage point to the code that made the cycles
        where = collections.Counter()
        for o in garbage:
            if type(o).__name__ == "frame":
                where[f"frame {os.path.basename(o.f_code.co_filename)}:{o.f_code.co_name}"] += 1
            elif type(o).__name__ == "function":
                where[f"function {o.__module__}.{o.__qualname__}"] += 1
            elif isinstance(o, BaseException):
                where[f"exception {type(o).__qualname__}: {str(o)[:60]}"] += 1
        self.garbage = {"objects": len(garbage), "types": types.most_common(40), "where": where.most_common(40)}
        del garbage

    def start(self, *_) -> None:
        self.timings.clear()
        if os.environ.get("LOOP_PROBE_GARBAGE"):
            threading.Timer(15, lambda: threading.Thread(target=self.census, daemon=True).start()).start()
        self.gcs.clear()
        self.lags.clear()
        self.stalls.clear()
        self.stacks.clear()
        self.t0 = time.perf_counter()
        self.on = True

    def stop(self, *_) -> None:
        self.on = False
        self.t1 = time.perf_counter()
        lags = sorted(self.lags)

        def q(p: float) -> float:
            return lags[min(len(lags) - 1, int(p * len(lags)))] * 1000 if lags else 0.0

        by_gen: dict[int, list[float]] = collections.defaultdict(list)
        collected: collections.Counter[int] = collections.Counter()
        for _, g, pause, n in self.gcs:
            by_gen[g].append(pause)
            collected[g] += n
        stall_gc = 0  # stalls during which a collection ran
        for ts, dur in self.stalls:
            if any(ts <= t <= ts + dur + 0.002 for t, _, _, _ in self.gcs):
                stall_gc += 1
        out = {
            "window_s": self.t1 - self.t0,
            "gc": {
                str(g): {"n": len(v), "total_ms": sum(v) * 1000, "max_ms": max(v) * 1000,
                         "p50_ms": sorted(v)[len(v) // 2] * 1000, "collected": collected[g]}
                for g, v in sorted(by_gen.items())
            },
            "gc_objects_after": len(gc.get_objects()),
            "gc_thresholds": gc.get_threshold(),
            "gc_tuning": self.tuned,
            "lag_ms": {"n": len(lags), "p50": q(0.5), "p99": q(0.99), "p999": q(0.999),
                       "max": lags[-1] * 1000 if lags else 0.0},
            "stalls": {"n": len(self.stalls), "over_ms": STALL_S * 1000,
                       "total_ms": sum(d for _, d in self.stalls) * 1000,
                       "with_gc": stall_gc,
                       "longest_ms": sorted((d * 1000 for _, d in self.stalls), reverse=True)[:20]},
            "timings_ms": {
                k: {"n": len(v), "p50": sorted(v)[len(v) // 2] * 1000, "p99": sorted(v)[int(len(v) * 0.99)] * 1000,
                    "max": max(v) * 1000}
                for k, v in self.timings.items() if v
            },
            "stall_stacks": self.stacks.most_common(40),
            "garbage": getattr(self, "garbage", None),
            "live_types": collections.Counter(
                type(o).__qualname__ + " " + str(getattr(type(o), "__module__", "")) for o in gc.get_objects()
            ).most_common(40),
        }
        with open(OUT, "w") as f:
            json.dump(out, f, indent=1)


def main() -> None:
    probe = Probe()
    gc.callbacks.append(probe.gc_callback)
    signal.signal(signal.SIGUSR1, probe.start)
    signal.signal(signal.SIGUSR2, probe.stop)
    threading.Thread(target=probe.watchdog, daemon=True).start()

    # how long the event store's commits take (all of it, and the wait for a pool connection
    # on PostgreSQL): where an action's time goes when the loop is not the one stalling
    import contextlib

    from app.db import database
    from app.live import store

    def timed(kind, fn):
        async def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return await fn(*a, **kw)
            finally:
                if probe.on:
                    probe.timings[kind].append(time.perf_counter() - t)
        return wrapper

    if os.environ.get("LOOP_PROBE_CREATORS"):  # creations holding a pool connection at once
        store.PostgresEventStore.CREATORS = int(os.environ["LOOP_PROBE_CREATORS"])
    for cls in (store.SqliteEventStore, store.PostgresEventStore):
        cls.commit = timed("commit", cls.commit)
        cls._create_game = timed("create_game", cls._create_game)
    acquire = database.Database.asyncpg_connection

    @contextlib.asynccontextmanager
    async def asyncpg_connection(self):
        t = time.perf_counter()
        async with acquire(self) as conn:
            if probe.on:
                probe.timings["pool_acquire"].append(time.perf_counter() - t)
            yield conn

    database.Database.asyncpg_connection = asyncpg_connection

    # the lag task starts with uvicorn's server, on its loop
    import uvicorn.server

    serve = uvicorn.server.Server.serve

    async def serve_probed(self, *a, **kw):
        asyncio.get_running_loop().create_task(probe.lag_task())
        return await serve(self, *a, **kw)

    uvicorn.server.Server.serve = serve_probed
    from app.cli import main as cli_main

    sys.argv = [sys.argv[0], "serve", "--log-level", "warning", *sys.argv[1:]]
    cli_main()


if __name__ == "__main__":
    main()
