"""The simulated study as a benchmark: does the loop compound on a 2-core CPU within 45 minutes?

    .venv/bin/python bench/simulate.py                      # defaults: 4 rounds, B-SUP + ORACLE
    .venv/bin/python bench/simulate.py --out var/sim-bench --resume   # continue an interrupted run

Runs ``multiref simulate`` (``sim.study``) and checks the targets of the issue:

- B-SUP's success in its last round is at least 20 points above its first round, and the two
  95% Wilson intervals do not overlap;
- the ORACLE control (trained on the true labels) ends at or above B-SUP;
- the feedback decoder's false-positive rate against the true labels (all B-SUP actions) < 5%;
- the whole run takes at most 45 minutes.

Prints the per-round table and the checks; writes ``OUT/report/bench.json``. Exit status 1 when
a target is missed (the numbers are still written).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REFERENCE = ROOT.parent / "shared" / "reference" / "kilogram"


def _ci(row: dict) -> str:
    low, high = row["success_ci95"]
    return f"[{100 * low:.1f}%, {100 * high:.1f}%]"


def checks(rows: list[dict], seconds: float, budget_s: float = 45 * 60) -> list[tuple[str, bool, str]]:
    sup = sorted((r for r in rows if r["system"] == "B-SUP"), key=lambda r: r["round"])
    oracle = sorted((r for r in rows if r["system"] == "ORACLE"), key=lambda r: r["round"])
    out = []
    if len(sup) >= 2:
        first, last = sup[0], sup[-1]
        gain = 100 * (last["success_rate"] - first["success_rate"])
        apart = last["success_ci95"][0] > first["success_ci95"][1]
        out.append(("B-SUP last − first ≥ 20 points", gain >= 20, f"{gain:+.1f} points"))
        out.append(("B-SUP first/last 95% intervals apart", apart,
                    f"{_ci(first)} vs {_ci(last)}"))
    if sup and oracle:
        out.append(("ORACLE ≥ B-SUP (last round)", oracle[-1]["success_rate"] >= sup[-1]["success_rate"],
                    f"{100 * oracle[-1]['success_rate']:.1f}% vs {100 * sup[-1]['success_rate']:.1f}%"))
    fp = sum(r["decoder"]["fp"] for r in sup)
    tn = sum(r["decoder"]["tn"] for r in sup)
    fpr = fp / (fp + tn) if fp + tn else None
    out.append(("decoder FPR vs true labels < 5%", fpr is not None and fpr < 0.05,
                "—" if fpr is None else f"{100 * fpr:.1f}% ({fp}/{fp + tn})"))
    out.append(("wall time ≤ 45 min", seconds <= budget_s, f"{seconds / 60:.1f} min"))
    return out


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from sim.study import Study, StudyConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "var" / "sim-bench")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--games", type=int, default=StudyConfig.games)
    ap.add_argument("--annotations", type=Path, default=REFERENCE / "dense_annotations.json")
    ap.add_argument("--tangrams", type=Path, default=REFERENCE / "tangrams-svg")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)
    console = Console()
    config = StudyConfig(
        run_dir=args.out, annotations=args.annotations, tangram_svgs=args.tangrams,
        rounds=args.rounds, games=args.games, quiet=True,
    )
    started = time.time()
    loads: list[float] = []  # the 1-minute load average every 30 s: the machine is shared
    stop = threading.Event()
    sampler = threading.Thread(target=lambda: [loads.append(os.getloadavg()[0]) for _ in iter(lambda: stop.wait(30), True)], daemon=True)
    loads.append(os.getloadavg()[0])
    sampler.start()
    try:
        summary = Study(config, console).run(resume=args.resume)
    finally:
        stop.set()
    seconds = time.time() - started
    load = {"mean": round(sum(loads) / len(loads), 2), "max": round(max(loads), 2), "samples": len(loads)}
    results = checks(summary["rows"], seconds)
    table = Table(title="simulated study: targets")
    for col in ("target", "met", "measured"):
        table.add_column(col)
    for name, ok, measured in results:
        table.add_row(name, "[green]yes[/]" if ok else "[red]no[/]", measured)
    console.print(table)
    console.print(f"1-minute load average during the run: mean {load['mean']}, max {load['max']} "
                  f"({os.cpu_count()} CPUs); {'resumed run: the time excludes earlier sessions' if args.resume else 'cold run: the time includes building the stand-in base'}")
    (args.out / "report" / "bench.json").write_text(
        json.dumps({"checks": [dict(zip(("target", "met", "measured"), c)) for c in results],
                    "seconds": seconds, "load_average_1min": load, "cpus": os.cpu_count(),
                    "resumed": args.resume}, indent=2)
    )
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
