"""A built-in, deterministic set of tangram silhouettes, so the platform runs without KiloGram.

The KiloGram images cannot ship with the project (see ``fetch.py``). When they cannot be
downloaded, the server still needs real-looking figures: this module builds them from the seven
standard tans, placing each new piece edge-to-edge against the figure so far, and writes them in
the KiloGram style (7 ``<polygon>`` elements with ids "1"–"7", one per tan, in the same id order
as the KiloGram files: 1 square, 2 parallelogram, 3–4 small triangles, 5 medium triangle,
6–7 large triangles).

Geometry is exact enough in floats: every edge direction is a multiple of 45°, rotations use the
exact values of cos/sin at those angles, and overlap is checked by clipping convex polygons
(every tan is convex), so there is no dependency on a geometry library.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

Point = tuple[float, float]
Polygon = tuple[Point, ...]

VIEW_SIZE = 144.0
VIEW_MARGIN = 8.0
GENERATOR_VERSION = 1  # bump when figures change, so cached sets are regenerated
ID_PREFIX = "builtin-"

_R2 = math.sqrt(2.0)
_H = _R2 / 2.0
# cos/sin of k·45°, exact up to float rounding of √2/2 (no accumulated trigonometric error).
_COS = (1.0, _H, 0.0, -_H, -1.0, -_H, 0.0, _H)
_SIN = (0.0, _H, 1.0, _H, 0.0, -_H, -1.0, -_H)


@dataclass(frozen=True)
class Tan:
    """One of the seven pieces: its KiloGram polygon id, its name and its outline (CCW)."""

    piece_id: str
    name: str
    outline: Polygon
    mirrorable: bool = False  # only the parallelogram changes shape when flipped


# The classic 16-unit set: a 4×4 square cut into seven pieces (areas 2, 2, 1, 1, 2, 4, 4).
TANS: tuple[Tan, ...] = (
    Tan("1", "square", ((0.0, 0.0), (_R2, 0.0), (_R2, _R2), (0.0, _R2))),
    Tan("2", "parallelogram", ((0.0, 0.0), (2.0, 0.0), (3.0, 1.0), (1.0, 1.0)), mirrorable=True),
    Tan("3", "small triangle", ((0.0, 0.0), (_R2, 0.0), (0.0, _R2))),
    Tan("4", "small triangle", ((0.0, 0.0), (_R2, 0.0), (0.0, _R2))),
    Tan("5", "medium triangle", ((0.0, 0.0), (2.0, 0.0), (0.0, 2.0))),
    Tan("6", "large triangle", ((0.0, 0.0), (2 * _R2, 0.0), (0.0, 2 * _R2))),
    Tan("7", "large triangle", ((0.0, 0.0), (2 * _R2, 0.0), (0.0, 2 * _R2))),
)
TAN_AREAS = {"1": 2.0, "2": 2.0, "3": 1.0, "4": 1.0, "5": 2.0, "6": 4.0, "7": 4.0}

_OVERLAP_EPS = 1e-7  # in tan units (the whole figure has area 16)
_ATTEMPTS_PER_PIECE = 400


# ---------------------------------------------------------------- polygon geometry


def polygon_area(poly: Polygon | list[Point]) -> float:
    """Signed area (shoelace): positive for counter-clockwise outlines."""
    total = 0.0
    n = len(poly)
    for i in range(n):
        x0, y0 = poly[i]
        x1, y1 = poly[(i + 1) % n]
        total += x0 * y1 - x1 * y0
    return total / 2.0


def clip_convex(subject: Polygon | list[Point], clip: Polygon | list[Point]) -> list[Point]:
    """Sutherland–Hodgman: the part of ``subject`` inside the convex CCW polygon ``clip``."""
    output = list(subject)
    n = len(clip)
    for i in range(n):
        if not output:
            break
        ax, ay = clip[i]
        bx, by = clip[(i + 1) % n]
        ex, ey = bx - ax, by - ay
        inputs = output
        output = []
        m = len(inputs)
        for j in range(m):
            px, py = inputs[j - 1]
            cx, cy = inputs[j]
            p_side = ex * (py - ay) - ey * (px - ax)
            c_side = ex * (cy - ay) - ey * (cx - ax)
            if c_side >= 0:
                if p_side < 0:
                    t = p_side / (p_side - c_side)
                    output.append((px + t * (cx - px), py + t * (cy - py)))
                output.append((cx, cy))
            elif p_side >= 0:
                t = p_side / (p_side - c_side)
                output.append((px + t * (cx - px), py + t * (cy - py)))
    return output


def overlap_area(a: Polygon | list[Point], b: Polygon | list[Point]) -> float:
    """Area of the intersection of two convex polygons (any orientation)."""
    if polygon_area(a) < 0:
        a = list(reversed(a))
    if polygon_area(b) < 0:
        b = list(reversed(b))
    inside = clip_convex(a, b)
    return abs(polygon_area(inside)) if len(inside) >= 3 else 0.0


def _bbox(poly: Polygon) -> tuple[float, float, float, float]:
    xs = [p[0] for p in poly]
    ys = [p[1] for p in poly]
    return min(xs), min(ys), max(xs), max(ys)


def _transform(poly: Polygon, steps: int, mirror: bool) -> Polygon:
    """Mirror (x → −x, outline kept CCW) then rotate by ``steps``·45° about the origin."""
    if mirror:
        poly = tuple((-x, y) for x, y in reversed(poly))
    c, s = _COS[steps % 8], _SIN[steps % 8]
    return tuple((c * x - s * y, s * x + c * y) for x, y in poly)


def _direction_step(dx: float, dy: float) -> int:
    """The multiple of 45° closest to the direction of (dx, dy)."""
    return round(math.atan2(dy, dx) / (math.pi / 4)) % 8


# ---------------------------------------------------------------- figure construction


def _place_against(tan: Tan, figure: list[Polygon], rng: random.Random) -> Polygon | None:
    """A random edge-to-edge placement of ``tan`` against ``figure`` that overlaps nothing."""
    boxes = [_bbox(p) for p in figure]
    for _ in range(_ATTEMPTS_PER_PIECE):
        host = figure[rng.randrange(len(figure))]
        k = rng.randrange(len(host))
        a0, a1 = host[k], host[(k + 1) % len(host)]
        mirror = tan.mirrorable and rng.random() < 0.5
        base = _transform(tan.outline, 0, mirror)
        j = rng.randrange(len(base))
        b0, b1 = base[j], base[(j + 1) % len(base)]
        # Rotate so the new edge runs opposite to the host edge: the piece lands on its far side.
        steps = (
            _direction_step(a0[0] - a1[0], a0[1] - a1[1])
            - _direction_step(b1[0] - b0[0], b1[1] - b0[1])
        ) % 8
        piece = _transform(tan.outline, steps, mirror)
        p0, p1 = piece[j], piece[(j + 1) % len(piece)]
        align = rng.randrange(3)
        if align == 0:  # corners meet at the host edge's end
            dx, dy = a1[0] - p0[0], a1[1] - p0[1]
        elif align == 1:  # corners meet at the host edge's start
            dx, dy = a0[0] - p1[0], a0[1] - p1[1]
        else:  # midpoints meet
            dx = (a0[0] + a1[0] - p0[0] - p1[0]) / 2
            dy = (a0[1] + a1[1] - p0[1] - p1[1]) / 2
        placed = tuple((x + dx, y + dy) for x, y in piece)
        x0, y0, x1, y1 = _bbox(placed)
        if all(
            x1 <= bx0 + 1e-9
            or bx1 <= x0 + 1e-9
            or y1 <= by0 + 1e-9
            or by1 <= y0 + 1e-9
            or overlap_area(placed, other) <= _OVERLAP_EPS
            for other, (bx0, by0, bx1, by1) in zip(figure, boxes, strict=True)
        ):
            return placed
    return None


def _spread(figure: list[Polygon]) -> float:
    x0 = min(_bbox(p)[0] for p in figure)
    y0 = min(_bbox(p)[1] for p in figure)
    x1 = max(_bbox(p)[2] for p in figure)
    y1 = max(_bbox(p)[3] for p in figure)
    return max(x1 - x0, y1 - y0) + 0.5 * min(x1 - x0, y1 - y0)


def build_figure(rng: random.Random) -> dict[str, Polygon]:
    """Seven tans in tan units, keyed by piece id: each new piece shares an edge with the figure.

    Each figure draws its own compactness (how many candidate placements compete per piece, the
    least spread-out one winning), so the set mixes sprawling and compact silhouettes.
    """
    while True:
        order = list(TANS)
        rng.shuffle(order)
        candidates = rng.choice((1, 1, 2, 3, 5))
        first = order[0]
        figure = [
            _transform(first.outline, rng.randrange(8), first.mirrorable and rng.random() < 0.5)
        ]
        pieces = {first.piece_id: figure[0]}
        for tan in order[1:]:
            options = [
                p for p in (_place_against(tan, figure, rng) for _ in range(candidates)) if p
            ]
            if not options:
                break
            best = min(options, key=lambda p: _spread(figure + [p]))
            figure.append(best)
            pieces[tan.piece_id] = best
        if len(pieces) == len(TANS):
            return pieces


def figure_svg(pieces: dict[str, Polygon]) -> str:
    """The KiloGram-style SVG: black silhouette, centred and scaled into a 144×144 view box."""
    boxes = [_bbox(p) for p in pieces.values()]
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    scale = (VIEW_SIZE - 2 * VIEW_MARGIN) / max(x1 - x0, y1 - y0)
    off_x = (VIEW_SIZE - scale * (x1 - x0)) / 2 - scale * x0
    off_y = (VIEW_SIZE - scale * (y1 - y0)) / 2 + scale * y1
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        f'<svg viewBox="0 0 {VIEW_SIZE:g} {VIEW_SIZE:g}" xmlns="http://www.w3.org/2000/svg">',
    ]
    for piece_id in sorted(pieces):
        # SVG's y axis points down: flip, so the outline stays the figure we built.
        points = " ".join(
            f"{off_x + scale * x:.3f},{off_y - scale * y:.3f}" for x, y in pieces[piece_id]
        )
        # A hairline black stroke hides anti-aliasing seams between touching pieces.
        lines.append(
            f'  <polygon id="{piece_id}" fill="black" stroke="black" stroke-width="0.5" '
            f'stroke-linejoin="round" points="{points}"/>'
        )
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def figure_rng(seed: int, index: int) -> random.Random:
    """The RNG of figure ``index``: independent of n, so a set's first figures never change."""
    digest = hashlib.sha256(
        f"multiref-builtin:{GENERATOR_VERSION}:{seed}:{index}".encode()
    ).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def builtin_id(index: int) -> str:
    return f"{ID_PREFIX}{index + 1:04d}"


def generate_set(n: int = 1013, seed: int = 0) -> dict[str, str]:
    """``n`` figures as {id: svg text}, ids ``builtin-0001`` …, the same for the same seed."""
    if n < 0:
        raise ValueError("n must be >= 0")
    return {builtin_id(i): figure_svg(build_figure(figure_rng(seed, i))) for i in range(n)}


def builtin_splits(ids: list[str]) -> dict[str, list[str]]:
    """Dev/train/test splits of a built-in set in MultiRef's proportions (101/456/456 of 1013)."""
    ordered = sorted(ids)
    n_dev = round(len(ordered) * 101 / 1013)
    n_train = round(len(ordered) * 456 / 1013)
    return {
        "dev": ordered[:n_dev],
        "train": ordered[n_dev : n_dev + n_train],
        "test": ordered[n_dev + n_train :],
    }


MANIFEST_NAME = "builtin.json"
SPLITS_NAME = "splits.json"


def write_set(directory: Path, n: int = 1013, seed: int = 0) -> list[Path]:
    """Write the set as ``<id>.svg`` files plus ``splits.json`` and a manifest; returns the SVGs.

    The manifest (n, seed, generator version) lets a cache tell whether it is still current.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    figures = generate_set(n, seed)
    for tid, svg in figures.items():
        path = directory / f"{tid}.svg"
        path.write_text(svg, encoding="utf-8")
        written.append(path)
    (directory / SPLITS_NAME).write_text(json.dumps(builtin_splits(list(figures)), indent=1))
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest(n, seed)))
    return written


def manifest(n: int, seed: int) -> dict[str, int]:
    return {"n": n, "seed": seed, "generator_version": GENERATOR_VERSION}


def is_current(directory: Path, n: int, seed: int) -> bool:
    """Whether ``directory`` already holds exactly this built-in set (same n, seed, version)."""
    try:
        found = json.loads((Path(directory) / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    if found != manifest(n, seed):
        return False
    return all((Path(directory) / f"{builtin_id(i)}.svg").is_file() for i in range(n))
