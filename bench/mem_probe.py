"""Where the server's resident memory goes over a long run: a ``--server-wrapper`` for
bench/ws_load.py and bench/soak.py, to tell a leak from caches that fill up.

    PYTHONPATH=. .venv/bin/python bench/soak.py --minutes 12 \\
        --server-wrapper bench/mem_probe.py --server-env MEM_PROBE_OUT=var/mem.jsonl

Runs ``app.cli.main()`` (the server). A thread writes one JSON line to ``MEM_PROBE_OUT`` every
``MEM_PROBE_EVERY`` seconds (default 10) with:

* RSS split as the kernel counts it (``/proc/self/status``: anonymous, file-backed, shared);
* SQLite's own allocator counters (``sqlite3_status64``: memory used, page-cache memory) and,
  with ``MEM_PROBE_CONNECTIONS=1`` (racy: see ``PER_CONNECTION``), per open SQLite connection
  its page cache (``sqlite3_db_status`` CACHE_USED), schema and statement memory; the
  connections are registered (held until closed) by wrapping ``sqlite3.connect``;
* glibc's heap (``mallinfo2``: bytes in use, bytes free inside the heap, mmapped blocks,
  the arenas' total) and the number of threads;
* CPython's object arenas (``sys._debugmallocstats``: arenas, bytes in blocks, free bytes);
* Python: ``sys.getallocatedblocks()`` and, with ``MEM_PROBE_TRACEMALLOC=N`` (frames), the
  traced total, and every 12 samples ``MEM_PROBE_OUT.tracemalloc.txt``: the 25 allocation sites
  that grew most since the first snapshot (taken after a minute).

``MEM_PROBE_TRIM=1`` tests a remedy without changing the server: ``malloc_trim(0)`` after each
full collection (the pages glibc keeps free inside its heap go back to the kernel), timed.

The probe costs a little (a wake-up every few seconds); tracemalloc costs a lot of CPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import sqlite3
import sys
import threading
import time

OUT = os.environ.get("MEM_PROBE_OUT", "mem_probe.jsonl")
EVERY = float(os.environ.get("MEM_PROBE_EVERY", "10"))
TRACE = int(os.environ.get("MEM_PROBE_TRACEMALLOC", "0"))
# per-connection counters read another thread's connection without its lock: a connection
# closed meanwhile (the WAL checkpoints' own, opened and closed in a worker thread) is a
# use-after-free, which crashed one probed server after 9 minutes. Off unless asked for.
PER_CONNECTION = os.environ.get("MEM_PROBE_CONNECTIONS") == "1"

# ---------------------------------------------------------------- SQLite through ctypes


def _libsqlite() -> ctypes.CDLL:
    """The libsqlite3 that ``_sqlite3`` links (the counters are per library, not per name)."""
    for line in open("/proc/self/maps"):
        path = line.split()[-1]
        if "libsqlite3" in path:
            return ctypes.CDLL(path)
    raise SystemExit("mem_probe: _sqlite3 links no shared libsqlite3 (statically linked?)")


LIB = _libsqlite()
LIB.sqlite3_status64.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int64), ctypes.c_int]
LIB.sqlite3_db_status.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int), ctypes.c_int]
LIB.sqlite3_db_filename.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
LIB.sqlite3_db_filename.restype = ctypes.c_char_p
LIB.sqlite3_memory_used.restype = ctypes.c_int64
STATUS = {"memory_used": 0, "pagecache_used": 1, "pagecache_overflow": 2, "malloc_count": 9}
DBSTATUS = {"cache_used": 1, "schema_used": 2, "stmt_used": 3, "lookaside_used": 0}

CONNECTIONS: list[sqlite3.Connection] = []  # no weak references to them; closed ones are dropped
_connect = sqlite3.connect


def _registering_connect(*args, **kwargs):
    conn = _connect(*args, **kwargs)
    CONNECTIONS.append(conn)
    return conn


sqlite3.connect = _registering_connect


def _db_pointer(conn: sqlite3.Connection) -> int:
    """``pysqlite_Connection.db``: the first field after the object header (CPython 3.11/3.12)."""
    return ctypes.c_void_p.from_address(id(conn) + 2 * ctypes.sizeof(ctypes.c_void_p)).value or 0


def sqlite_counters() -> dict:
    out = {}
    cur, hi = ctypes.c_int64(), ctypes.c_int64()
    for name, op in STATUS.items():
        LIB.sqlite3_status64(op, ctypes.byref(cur), ctypes.byref(hi), 0)
        out[name] = cur.value
    conns = []
    for conn in list(CONNECTIONS) if PER_CONNECTION else ():
        db = _db_pointer(conn)
        if not db:  # closed
            CONNECTIONS.remove(conn)
            continue
        name = LIB.sqlite3_db_filename(db, b"main")
        row = {"file": os.path.basename(name.decode()) if name else "?"}
        c, h = ctypes.c_int(), ctypes.c_int()
        for key, op in DBSTATUS.items():
            LIB.sqlite3_db_status(db, op, ctypes.byref(c), ctypes.byref(h), 0)
            row[key] = c.value
        conns.append(row)
    out["connections"] = conns
    out["cache_used_total"] = sum(c["cache_used"] for c in conns)
    return out


# ---------------------------------------------------------------- glibc and the kernel


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


LIBC = ctypes.CDLL(ctypes.util.find_library("c"))
LIBC.mallinfo2.restype = _Mallinfo2


def heap() -> dict:
    m = LIBC.mallinfo2()
    return {"arena": m.arena, "mmapped": m.hblkhd, "in_use": m.uordblks, "free": m.fordblks,
            "keepcost": m.keepcost, "chunks_free": m.ordblks}


def obmalloc() -> dict:
    """CPython's small-object allocator (``sys._debugmallocstats``, which writes to fd 2, read
    back through a temporary file): arenas (256 KiB .. 1 MiB each) and the bytes in use in them."""
    import tempfile

    keys = {"# arenas allocated current": "arenas", "# bytes in allocated blocks": "in_blocks",
            "# bytes in available blocks": "free_blocks", "Total": "total"}
    out = {}
    with tempfile.TemporaryFile("w+") as tmp:
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        for line in tmp:
            key, _, value = line.partition("=")
            key = key.strip()
            if key in keys:
                out[keys[key]] = int(value.strip().replace(",", ""))
    return out


def kernel() -> dict:
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads"):
            out[key] = int(value.split()[0])
    return out


# ---------------------------------------------------------------- sampling


class Sampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True, name="mem_probe")
        self.t0 = time.time()
        self.first = None

    def sample(self) -> dict:
        row = {"t": round(time.time() - self.t0, 1), **kernel(), "heap": heap(),
               "obmalloc": obmalloc(), "py_blocks": sys.getallocatedblocks(),
               "trims": len(TRIMS), "trim_ms_max": round(max(TRIMS, default=0) * 1000, 2),
               "trim_ms_mean": round(sum(TRIMS) / max(1, len(TRIMS)) * 1000, 2)}
        try:
            row["sqlite"] = sqlite_counters()
        except Exception as exc:  # a probe must not stop the server
            row["sqlite"] = {"error": repr(exc)}
        if TRACE:
            import tracemalloc

            row["traced"] = tracemalloc.get_traced_memory()[0]
            if self.first is None and row["t"] > 60:
                self.first = tracemalloc.take_snapshot()
        return row

    def run(self) -> None:
        n = 0
        with open(OUT, "a") as f:
            while True:
                f.write(json.dumps(self.sample()) + "\n")
                f.flush()
                n += 1
                if TRACE and self.first is not None and n % 12 == 0:
                    self.top_growth()
                time.sleep(EVERY)

    def top_growth(self) -> None:
        """The 25 allocation sites that grew most since the first snapshot (rewritten each time)."""
        import tracemalloc

        stats = tracemalloc.take_snapshot().compare_to(self.first, "traceback")[:25]
        with open(OUT + ".tracemalloc.txt", "w") as f:
            for s in stats:
                f.write(f"{s.size_diff / 1024:+.1f} KiB {s.count_diff:+d} blocks\n")
                f.write("".join("    " + line + "\n" for line in s.traceback.format()[-6:]))


TRIMS: list[float] = []  # seconds per malloc_trim (MEM_PROBE_TRIM=1)


def _trim_after_full_collection(phase: str, info: dict) -> None:
    if phase == "stop" and info["generation"] == 2:
        t = time.perf_counter()
        LIBC.malloc_trim(0)
        TRIMS.append(time.perf_counter() - t)


if os.environ.get("MEM_PROBE_TRIM") == "1":  # the remedy under test, without changing the server
    import gc

    gc.callbacks.append(_trim_after_full_collection)
if TRACE:
    import tracemalloc

    tracemalloc.start(TRACE)
SAMPLER = Sampler()
SAMPLER.start()
sys.argv = [sys.argv[0], "serve", "--log-level", "warning", *sys.argv[1:]]
from app.cli import main  # noqa: E402

main()
