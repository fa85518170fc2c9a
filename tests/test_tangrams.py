"""Tangram sets: the store, the splits, the built-in generator, rendering, the KiloGram download."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageDraw
from typer.testing import CliRunner

from app.tangrams import builtin, store
from tests.conftest import KILOGRAM_FILES_SKIP
from app.tangrams.builtin import TAN_AREAS, generate_set, overlap_area, polygon_area, write_set
from app.tangrams.cli import tangrams_app
from app.tangrams.fetch import COPYRIGHT_FILE, NOTICE_FILE, KilogramFetchError, fetch_kilogram
from app.tangrams.render import parse_svg, parse_transform, render_png
from app.tangrams.store import TangramSet, TangramSetError, load_splits, resolve_tangram_set

REFERENCE = Path(
    os.environ.get("MULTIREF_REFERENCE_DIR")
    or Path(__file__).resolve().parents[1].parent / "shared" / "reference"
)
KILOGRAM_SVG = REFERENCE / "kilogram" / "tangrams-svg"
SPLITS_FILE = REFERENCE / "kilogram" / "multiref_splits.json"
needs_reference = pytest.mark.skipif(
    not KILOGRAM_SVG.is_dir(),
    reason=f"{KILOGRAM_FILES_SKIP}: KiloGram reference copy not found at {KILOGRAM_SVG} "
    "(set MULTIREF_REFERENCE_DIR to the shared/reference folder)",
)


# ---------------------------------------------------------------- store and splits


@needs_reference
def test_kilogram_reference_set() -> None:
    tangrams = TangramSet(KILOGRAM_SVG)
    assert len(tangrams) == 1013
    ids = tangrams.ids()
    assert ids == sorted(ids)
    assert "page-A" in tangrams and "page1-136" in tangrams
    assert "COPYRIGHT-COVER-SHEET" not in tangrams  # the PDF is not an image
    assert tangrams.path("page-A") == KILOGRAM_SVG / "page-A.svg"
    assert tangrams.media_type("page-A") == "image/svg+xml"
    with pytest.raises(KeyError):
        tangrams.path("no-such-tangram")


@needs_reference
def test_multiref_splits() -> None:
    splits = load_splits(SPLITS_FILE)
    assert {name: len(ids) for name, ids in splits.items()} == {
        "dev": 101,
        "train": 456,
        "test": 456,
    }
    every = [t for ids in splits.values() for t in ids]
    assert len(set(every)) == len(every) == 1013  # disjoint
    tangrams = TangramSet(KILOGRAM_SVG)
    assert all(t in tangrams for t in every)


def test_store_mixes_svg_and_png(tmp_path: Path) -> None:
    svgs = generate_set(2)
    for tid, svg in svgs.items():
        (tmp_path / f"{tid}.svg").write_text(svg)
    Image.new("RGB", (30, 20), "white").save(tmp_path / "photo.png")
    (tmp_path / "notes.txt").write_text("not an image")
    tangrams = TangramSet(tmp_path)
    assert tangrams.ids() == ["builtin-0001", "builtin-0002", "photo"]
    assert len(tangrams) == 3
    assert tangrams.media_type("photo") == "image/png"
    assert "notes" not in tangrams


def test_store_rejects_unusable_folders(tmp_path: Path) -> None:
    with pytest.raises(TangramSetError, match="does not exist"):
        TangramSet(tmp_path / "missing")
    with pytest.raises(TangramSetError, match="no .svg or .png"):
        TangramSet(tmp_path)
    (tmp_path / "a.svg").write_text(generate_set(1)["builtin-0001"])
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    with pytest.raises(TangramSetError, match="two files"):
        TangramSet(tmp_path)


def test_load_splits_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TangramSetError, match="not valid JSON"):
        load_splits(bad)
    bad.write_text(json.dumps({"dev": "page-A"}))
    with pytest.raises(TangramSetError, match="list of ids"):
        load_splits(bad)
    with pytest.raises(TangramSetError, match="Cannot read"):
        load_splits(tmp_path / "missing.json")


# ---------------------------------------------------------------- built-in generator


def _pieces(svg: str) -> dict[str, tuple[tuple[float, float], ...]]:
    figure = parse_svg(svg)
    return dict(zip(figure.polygon_ids, figure.polygons, strict=True))


def _shared_edge_length(a, b) -> float:
    """Length of the longest stretch where an edge of ``a`` lies along an edge of ``b``."""
    best = 0.0
    for i in range(len(a)):
        p, q = a[i], a[(i + 1) % len(a)]
        length = math.dist(p, q)
        ux, uy = (q[0] - p[0]) / length, (q[1] - p[1]) / length
        for j in range(len(b)):
            r, s = b[j], b[(j + 1) % len(b)]
            # both ends of b's edge on the line of a's edge?
            if any(abs(ux * (v[1] - p[1]) - uy * (v[0] - p[0])) > 0.02 for v in (r, s)):
                continue
            t0 = ux * (r[0] - p[0]) + uy * (r[1] - p[1])
            t1 = ux * (s[0] - p[0]) + uy * (s[1] - p[1])
            lo, hi = max(0.0, min(t0, t1)), min(length, max(t0, t1))
            best = max(best, hi - lo)
    return best


def _check_figure(svg: str) -> None:
    assert 'viewBox="0 0 144 144"' in svg
    assert svg.count("<polygon") == 7
    assert svg.count('fill="black"') == 7
    pieces = _pieces(svg)
    assert sorted(pieces) == ["1", "2", "3", "4", "5", "6", "7"]
    # Shapes: 1 square and 2 parallelogram have four corners, the triangles three.
    assert {k: len(v) for k, v in pieces.items()} == {
        "1": 4,
        "2": 4,
        "3": 3,
        "4": 3,
        "5": 3,
        "6": 3,
        "7": 3,
    }
    # Areas in the classic 16-unit proportions.
    areas = {k: abs(polygon_area(v)) for k, v in pieces.items()}
    unit = sum(areas.values()) / 16
    for k, area in areas.items():
        assert area / unit == pytest.approx(TAN_AREAS[k], rel=0.01), (k, areas)
    # No two pieces overlap (beyond the rounding of 3-decimal coordinates).
    ids = sorted(pieces)
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            assert overlap_area(pieces[a], pieces[b]) < 0.01 * unit, (a, b)
    # Connected: pieces linked by shared edge stretches form one component.
    reached, frontier = {"1"}, ["1"]
    while frontier:
        a = frontier.pop()
        for b in ids:
            if b not in reached and _shared_edge_length(pieces[a], pieces[b]) > 0.05 * math.sqrt(
                unit
            ):
                reached.add(b)
                frontier.append(b)
    assert reached == set(ids)
    # Centred and scaled to fit the view box.
    xs = [x for p in pieces.values() for x, _ in p]
    ys = [y for p in pieces.values() for _, y in p]
    assert min(xs) >= 0 and min(ys) >= 0 and max(xs) <= 144 and max(ys) <= 144
    assert max(max(xs) - min(xs), max(ys) - min(ys)) == pytest.approx(128, abs=0.01)
    assert (min(xs) + max(xs)) / 2 == pytest.approx(72, abs=0.01)
    assert (min(ys) + max(ys)) / 2 == pytest.approx(72, abs=0.01)


def _raster_overlap(svg: str, scale: int = 4) -> int:
    """Pixels covered by two pieces, each drawn shrunk 5% about its centroid (independent of
    the generator's clipping code)."""
    total = Image.new("L", (144 * scale, 144 * scale), 0)
    for poly in _pieces(svg).values():
        cx = sum(x for x, _ in poly) / len(poly)
        cy = sum(y for _, y in poly) / len(poly)
        mask = Image.new("L", total.size, 0)
        ImageDraw.Draw(mask).polygon(
            [((cx + 0.95 * (x - cx)) * scale, (cy + 0.95 * (y - cy)) * scale) for x, y in poly],
            fill=1,
        )
        total = ImageChops.add(total, mask)
    return sum(total.histogram()[2:])


def test_generator_is_deterministic_and_prefix_stable() -> None:
    first = generate_set(6, seed=0)
    assert generate_set(6, seed=0) == first
    assert list(first) == [f"builtin-{i:04d}" for i in range(1, 7)]
    assert list(generate_set(3, seed=0).items()) == list(first.items())[:3]
    other = generate_set(6, seed=1)
    assert list(other) == list(first)
    assert all(other[k] != first[k] for k in first)


def test_generator_figures_are_valid_tangrams() -> None:
    for svg in generate_set(60, seed=42).values():
        _check_figure(svg)
        assert _raster_overlap(svg) == 0


def test_check_would_catch_overlapping_pieces() -> None:
    """The overlap checks above can fail: a figure with one piece moved onto another does."""
    svg = generate_set(1)["builtin-0001"]
    pieces = _pieces(svg)
    a = pieces["6"]
    moved = " ".join(f"{x:.3f},{y:.3f}" for x, y in pieces["7"])
    target = " ".join(f"{x:.3f},{y:.3f}" for x, y in a)
    broken = svg.replace(f'points="{moved}"', f'points="{target}"')
    assert broken != svg
    assert _raster_overlap(broken) > 0
    with pytest.raises(AssertionError):
        _check_figure(broken)


def test_full_builtin_set_is_fast_valid_and_varied() -> None:
    start = time.perf_counter()
    figures = generate_set(1013, seed=0)
    elapsed = time.perf_counter() - start
    assert elapsed < 20, f"generating 1013 figures took {elapsed:.1f}s"
    assert len(figures) == 1013
    assert len(set(figures.values())) == 1013
    angles: set[int] = set()
    compactness = []
    for svg in figures.values():
        _check_figure(svg)
        pieces = _pieces(svg)
        for poly in pieces.values():
            (x0, y0), (x1, y1) = poly[0], poly[1]
            angles.add(round(math.degrees(math.atan2(y1 - y0, x1 - x0))) % 360)
        xs = [x for p in pieces.values() for x, _ in p]
        ys = [y for p in pieces.values() for _, y in p]
        compactness.append((max(xs) - min(xs)) * (max(ys) - min(ys)))
    assert angles == set(range(0, 360, 45))  # rotations in 45° steps, all used
    compactness.sort()
    assert compactness[-1] > 1.8 * compactness[0]  # both compact and sprawling figures


def test_write_set_writes_svgs_splits_and_manifest(tmp_path: Path) -> None:
    paths = write_set(tmp_path / "set", n=12, seed=3)
    assert len(paths) == 12 and all(p.suffix == ".svg" for p in paths)
    assert paths[0].read_text() == generate_set(1, seed=3)["builtin-0001"]
    splits = load_splits(tmp_path / "set" / builtin.SPLITS_NAME)
    assert sorted(t for ids in splits.values() for t in ids) == sorted(p.stem for p in paths)
    assert builtin.is_current(tmp_path / "set", 12, 3)
    assert not builtin.is_current(tmp_path / "set", 12, 4)
    assert len(TangramSet(tmp_path / "set")) == 12


# ---------------------------------------------------------------- rendering


def _black_white(image: Image.Image) -> tuple[int, int]:
    gray = image.convert("L").histogram()
    return sum(gray[:50]), sum(gray[206:])


def test_render_builtin_svg() -> None:
    image = render_png(generate_set(1)["builtin-0001"])
    assert image.size == (224, 224) and image.mode == "RGB"
    black, white = _black_white(image)
    assert black > 0.08 * 224 * 224 and white > 0.2 * 224 * 224
    assert image.getpixel((0, 0)) == (255, 255, 255)  # margin stays white
    assert render_png(generate_set(1)["builtin-0001"], size=64).size == (64, 64)


@needs_reference
def test_render_kilogram_files_with_transforms() -> None:
    path = KILOGRAM_SVG / "page-A.svg"
    text = path.read_text()
    assert "transform=" in text
    figure = parse_svg(text)
    min_x, min_y, width, height = figure.view_box
    assert (width, height) == (189, 298)
    # The raw points fall outside the view box (y up to 315); with the transforms applied they fit.
    for poly in figure.polygons:
        for x, y in poly:
            assert min_x - 3 <= x <= min_x + width + 3 and min_y - 3 <= y <= min_y + height + 3
    image = render_png(path)
    assert image.size == (224, 224) and image.mode == "RGB"
    black, white = _black_white(image)
    assert black > 0.05 * 224 * 224 and white > 0.2 * 224 * 224
    # A tall view box is fitted by its height: the side columns stay white.
    assert all(
        image.getpixel((x, y)) == (255, 255, 255) for x in (0, 223) for y in range(0, 224, 8)
    )


def test_parse_transform() -> None:
    a, b, c, d, e, f = parse_transform("translate(10, 5) rotate(90)")
    # (1, 0) rotated by 90° is (0, 1), then moved by (10, 5)
    assert (a * 1 + c * 0 + e, b * 1 + d * 0 + f) == pytest.approx((10, 6))
    assert parse_transform("matrix(1 2 3 4 5 6)") == (1, 2, 3, 4, 5, 6)
    assert parse_transform("scale(2)")[:4] == (2, 0, 0, 2)
    with pytest.raises(ValueError):
        parse_transform("perspective(3)")


def test_render_png_file(tmp_path: Path) -> None:
    # A transparent, wide PNG with a black square in the middle.
    source = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    ImageDraw.Draw(source).rectangle((80, 30, 120, 70), fill=(0, 0, 0, 255))
    source.save(tmp_path / "wide.png")
    image = render_png(tmp_path / "wide.png")
    assert image.size == (224, 224) and image.mode == "RGB"
    assert image.getpixel((112, 112)) == (0, 0, 0)
    assert image.getpixel((5, 5)) == (255, 255, 255)  # transparency became white


# ---------------------------------------------------------------- KiloGram download (local fake)


class FakeGitHub:
    """A local stand-in for api.github.com and raw.githubusercontent.com."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[str] = []
        self.refuse_api = False
        self.broken: set[str] = set()  # listed, but their download fails
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                fake.requests.append(self.path)
                status, body = fake.answer(self.path)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def answer(self, path: str) -> tuple[int, bytes]:
        trees = {
            "/repos/lil-lab/kilogram/git/trees/main": [
                {"path": "README.md", "type": "blob", "sha": "r", "size": 10},
                {"path": "dataset", "type": "tree", "sha": "sha-dataset"},
            ],
            "/repos/lil-lab/kilogram/git/trees/sha-dataset": [
                {"path": "dense.json", "type": "blob", "sha": "d", "size": 5},
                {"path": "tangrams-svg", "type": "tree", "sha": "sha-svg"},
            ],
            "/repos/lil-lab/kilogram/git/trees/sha-svg": [
                {"path": name, "type": "blob", "sha": name, "size": len(data)}
                for name, data in self.files.items()
            ],
        }
        if path.startswith("/repos/"):
            if self.refuse_api:
                return 403, b'{"message": "API rate limit exceeded"}'
            if path in trees:
                return 200, json.dumps(
                    {"sha": "x", "tree": trees[path], "truncated": False}
                ).encode()
            return 404, b"{}"
        prefix = "/lil-lab/kilogram/main/dataset/tangrams-svg/"
        name = path[len(prefix) :]
        if path.startswith(prefix) and name in self.files and name not in self.broken:
            return 200, self.files[name]
        return 404, b"not found"

    def raw_requests(self) -> list[str]:
        return [p.rsplit("/", 1)[-1] for p in self.requests if not p.startswith("/repos/")]


@pytest.fixture
def fake_github(tmp_path: Path) -> Iterator[FakeGitHub]:
    """Serve a few real KiloGram files (copied at run time, never into the repository), or
    generated ones when the reference copy is absent, plus the copyright sheet."""
    remote = tmp_path / "remote"
    remote.mkdir()
    if KILOGRAM_SVG.is_dir():
        for name in ("page-A.svg", "page-B.svg", "page1-136.svg", COPYRIGHT_FILE):
            shutil.copy(KILOGRAM_SVG / name, remote / name)
    else:
        for tid, svg in generate_set(3).items():
            (remote / f"{tid}.svg").write_text(svg)
        (remote / COPYRIGHT_FILE).write_bytes(b"%PDF-1.4 copyright notice")
    (remote / "extra.txt").write_text("not downloaded")
    server = FakeGitHub({p.name: p.read_bytes() for p in sorted(remote.iterdir())})
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


def _fetch(server: FakeGitHub, dest: Path, **kwargs):
    return fetch_kilogram(
        dest, progress=False, timeout=5, api_base=server.base, raw_base=server.base, **kwargs
    )


def test_fetch_downloads_svgs_and_keeps_the_copyright(
    fake_github: FakeGitHub, tmp_path: Path
) -> None:
    dest = tmp_path / "kilogram"
    report = _fetch(fake_github, dest)
    svgs = sorted(n for n in fake_github.files if n.endswith(".svg"))
    assert report.svg_count == len(svgs) == 3 and report.downloaded == 4 and report.skipped == 0
    for name in [*svgs, COPYRIGHT_FILE]:
        assert (dest / name).read_bytes() == fake_github.files[name]
    assert not (dest / "extra.txt").exists()  # only SVGs and the copyright sheet
    notice = (dest / NOTICE_FILE).read_text()
    assert "github.com/lil-lab/kilogram" in notice and "dataset/tangrams-svg" in notice
    assert COPYRIGHT_FILE in notice and "research" in notice
    assert TangramSet(dest).ids() == [n[:-4] for n in svgs]
    assert not list(dest.glob(".part-*"))  # no temporary file left behind


def test_fetch_resumes(fake_github: FakeGitHub, tmp_path: Path) -> None:
    dest = tmp_path / "kilogram"
    _fetch(fake_github, dest)
    svgs = sorted(n for n in fake_github.files if n.endswith(".svg"))
    (dest / svgs[0]).unlink()
    (dest / svgs[1]).write_bytes(b"")  # an empty file counts as missing
    fake_github.requests.clear()
    report = _fetch(fake_github, dest)
    assert sorted(fake_github.raw_requests()) == sorted(svgs[:2])
    assert report.downloaded == 2 and report.skipped == 2
    assert (dest / svgs[1]).read_bytes() == fake_github.files[svgs[1]]


def test_fetch_offline_error_is_clear(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    with pytest.raises(KilogramFetchError, match="Could not reach 127.0.0.1.*offline"):
        fetch_kilogram(tmp_path / "k", progress=False, timeout=2, api_base=base, raw_base=base)
    assert not (tmp_path / "k").exists()


def test_fetch_reports_rate_limits_and_missing_folders(
    fake_github: FakeGitHub, tmp_path: Path
) -> None:
    with pytest.raises(KilogramFetchError, match="no folder dataset/nothing"):
        _fetch(fake_github, tmp_path / "a", folder="dataset/nothing")
    fake_github.refuse_api = True
    with pytest.raises(KilogramFetchError, match="rate limit"):
        _fetch(fake_github, tmp_path / "b")


def test_fetch_reports_failed_files_and_keeps_the_others(
    fake_github: FakeGitHub, tmp_path: Path
) -> None:
    svgs = sorted(n for n in fake_github.files if n.endswith(".svg"))
    fake_github.broken.add(svgs[0])
    with pytest.raises(KilogramFetchError, match="1 of 4 KiloGram files.*again to resume"):
        _fetch(fake_github, tmp_path / "k")
    assert not (tmp_path / "k" / svgs[0]).exists()
    assert (tmp_path / "k" / svgs[1]).read_bytes() == fake_github.files[svgs[1]]
    assert not (tmp_path / "k" / NOTICE_FILE).exists()  # written once the set is complete
    fake_github.broken.clear()
    fake_github.requests.clear()
    _fetch(fake_github, tmp_path / "k")
    assert fake_github.raw_requests() == [svgs[0]]


def test_fetch_requires_the_copyright_sheet(fake_github: FakeGitHub, tmp_path: Path) -> None:
    del fake_github.files[COPYRIGHT_FILE]
    with pytest.raises(KilogramFetchError, match=COPYRIGHT_FILE):
        _fetch(fake_github, tmp_path / "k")
    assert not fake_github.raw_requests()  # refused before downloading any image


# ---------------------------------------------------------------- which set a server uses


def test_resolve_uses_the_configured_folder(tmp_path: Path) -> None:
    write_set(tmp_path / "mine", n=11)
    tangrams = resolve_tangram_set(tmp_path / "mine", tmp_path / "cache", allow_download=False)
    assert tangrams.folder == tmp_path / "mine" and len(tangrams) == 11
    with pytest.raises(TangramSetError, match="does not exist"):
        resolve_tangram_set(tmp_path / "typo", tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TangramSetError, match="no .svg or .png"):
        resolve_tangram_set(tmp_path / "empty", tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # nothing downloaded or generated


def test_resolve_falls_back_to_builtin_without_download(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="multiref.tangrams"):
        tangrams = resolve_tangram_set(None, cache, allow_download=False, builtin_n=15)
    assert tangrams.folder == cache / "builtin" and len(tangrams) == 15
    assert tangrams.ids()[0] == "builtin-0001"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "multiref tangrams fetch DIR" in message
    assert "MULTIREF_TANGRAMS=DIR" in message and "--tangrams DIR" in message
    # A second start reuses the generated set instead of writing it again.
    stamp = (cache / "builtin" / "builtin-0001.svg").stat().st_mtime_ns
    time.sleep(0.01)
    again = resolve_tangram_set(None, cache, allow_download=False, builtin_n=15)
    assert again.ids() == tangrams.ids()
    assert (cache / "builtin" / "builtin-0001.svg").stat().st_mtime_ns == stamp


def test_resolve_falls_back_when_the_download_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    def offline(dest: Path, progress: bool = True, timeout: float = 30.0, **kwargs: object):
        calls.append(timeout)
        raise KilogramFetchError("Could not reach api.github.com")

    monkeypatch.setattr(store, "fetch_kilogram", offline)
    with caplog.at_level(logging.WARNING, logger="multiref.tangrams"):
        tangrams = resolve_tangram_set(None, tmp_path / "cache", builtin_n=12)
    assert calls and calls[0] <= 10  # a short timeout: a server start must not hang offline
    assert tangrams.folder == tmp_path / "cache" / "builtin"
    assert "Could not reach api.github.com" in caplog.text


def test_resolve_uses_a_complete_kilogram_cache_without_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_run(*args: object, **kwargs: object):
        raise AssertionError("downloaded although the cache is complete")

    monkeypatch.setattr(store, "fetch_kilogram", must_not_run)
    kilogram = tmp_path / "cache" / "kilogram"
    kilogram.mkdir(parents=True)
    svg = generate_set(1)["builtin-0001"]
    for i in range(1013):
        (kilogram / f"page-{i}.svg").write_text(svg)
    tangrams = resolve_tangram_set(None, tmp_path / "cache")
    assert tangrams.folder == kilogram and len(tangrams) == 1013


# ---------------------------------------------------------------- command line


def test_cli_builtin_and_list(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        tangrams_app, ["builtin", str(tmp_path / "set"), "--n", "20", "--seed", "2"]
    )
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "set").glob("*.svg"))) == 20
    result = runner.invoke(
        tangrams_app,
        ["list", str(tmp_path / "set"), "--splits", str(tmp_path / "set" / builtin.SPLITS_NAME)],
    )
    assert result.exit_code == 0, result.output
    assert "20 tangrams" in result.output and "builtin-0001" in result.output
    assert "split dev: 2 of 2 ids present" in result.output
    missing = tmp_path / ("missing-" + "x" * 70)  # longer than a terminal line: still one line
    result = runner.invoke(tangrams_app, ["list", str(missing)])
    assert result.exit_code == 1
    assert f"Tangram folder {missing} does not exist (or is not a folder)." in result.output


@pytest.mark.parametrize("command", ["fetch", "builtin", "list"])
def test_cli_help(command: str) -> None:
    result = CliRunner().invoke(tangrams_app, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output and len(result.output) > 200
