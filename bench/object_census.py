"""What the server keeps between the start and the end of a load window: a ``--server-wrapper``
for bench/ws_load.py, to find what a soak's memory growth is made of.

    PYTHONPATH=. .venv/bin/python bench/ws_load.py --db sqlite --games 200 --duration 90 \
        --baseline-games 0 --server-wrapper bench/object_census.py --server-env LEAK_OUT=var/census.json

Runs ``multiref serve``; at SIGUSR1 (the window opens) and SIGUSR2 (it closes) it collects garbage
and counts the collector-tracked objects by type, and notes every dict, set, list or deque with
more than 50 entries. ``LEAK_OUT`` gets the 40 types whose count grew most and the containers
that grew by more than 100 entries (a sample of their items and what refers to them). Objects
the collector does not track (str, bytes, numbers) show only through the containers holding
them; memory below Python (SQLite, the allocator) does not show at all.
"""
from __future__ import annotations

import collections
import gc
import json
import os
import signal
import sys
import traceback

OUT = os.environ.get("LEAK_OUT", "leak.json")
state = {}

def name(o):
    t = type(o)
    return f"{getattr(t, '__module__', '?')!s}.{getattr(t, '__qualname__', t.__name__)!s}"

def census():
    gc.collect()
    return collections.Counter(name(o) for o in gc.get_objects())

def sizes():
    return {id(o): (len(o), o) for o in gc.get_objects() if isinstance(o, (dict, set, list, collections.deque, collections.OrderedDict)) and len(o) > 50}

def start(*_):
    try:
        state["a"] = census()
        state["sa"] = {k: v[0] for k, v in sizes().items()}
    except Exception:
        state["err"] = traceback.format_exc()

def stop(*_):
    try:
        b = census()
        a = state.get("a", collections.Counter())
        diff = sorted(((k, b[k] - a.get(k, 0)) for k in b), key=lambda kv: -kv[1])[:40]
        sa = state.get("sa", {})
        grown = []
        for k, (n, o) in sizes().items():
            d = n - sa.get(k, 0)
            if d > 100:
                sample = list(o)[:3] if not isinstance(o, dict) else list(o.items())[:3]
                owners = []
                for r in gc.get_referrers(o)[:4]:
                    if isinstance(r, dict):
                        owners.append("dict keys: " + ",".join(str(x) for x in list(r)[:8]))
                    else:
                        owners.append(name(r))
                grown.append((d, n, name(o), repr(sample)[:300], owners))
        grown.sort(key=lambda g: -g[0])
        out = {"top": diff, "grown": grown[:15], "err": state.get("err")}
    except Exception:
        out = {"err": traceback.format_exc()}
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)

signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
sys.argv = [sys.argv[0], "serve", "--log-level", "warning", *sys.argv[1:]]
from app.cli import main
main()
