"""The top stacks of a py-spy raw profile (``ws_load.py --py-spy PREFIX`` writes them).

    .venv/bin/python bench/spy_top.py PREFIX.sqlite.500.txt [--only app/,starlette/] [--top 40]

Prints, for each function (name and file), the share of samples in which it is on the stack
(inclusive time; ``--self`` for the share in which it is the innermost frame), so that two
profiles of the same load can be compared function by function.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path


def frame_key(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (to/file.py)``: lines differ between versions."""
    name, _, loc = frame.partition(" (")
    if not loc:
        return frame
    path = loc.rsplit(":", 1)[0].rstrip(")")
    return f"{name} ({'/'.join(path.split('/')[-2:])})"


def shares(path: Path, inner: bool = False) -> tuple[int, Counter[str]]:
    total, counts = 0, Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        total += int(n)
        frames = [frame_key(f) for f in stack.split(";")]
        for key in {frames[-1]} if inner else set(frames):
            counts[key] += int(n)
    return total, counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("profile", type=Path, help="py-spy raw (collapsed stacks) file")
    p.add_argument("--only", default="", help="comma-separated substrings of the frames to show")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--self", dest="inner", action="store_true", help="innermost frame only")
    args = p.parse_args(argv)
    if not args.profile.is_file():
        p.error(f"no such profile: {args.profile}")
    total, counts = shares(args.profile, args.inner)
    if not total:
        p.error(f"no samples in {args.profile}")
    only = [s for s in args.only.split(",") if s]
    shown = 0
    print(f"{total} samples")
    for key, n in counts.most_common():
        if only and not any(s in key for s in only):
            continue
        print(f"{100 * n / total:5.1f}%  {key}")
        shown += 1
        if shown >= args.top:
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
