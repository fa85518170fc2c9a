"""Rasterise tangram SVGs with Pillow alone, for the model listener's 224 px images.

Tangram files are tiny, flat SVGs: a view box and seven ``<polygon>`` elements, some with a
``transform`` (18 KiloGram files use ``matrix(...)``). Parsing exactly that is a few dozen lines,
where a general SVG renderer would add a native dependency (cairo) to every deployment.
Every figure is drawn as one black silhouette on white, whatever the file's fill colour
(KiloGram's are light grey with white outlines between the pieces), so the model sees the same
kind of image for KiloGram, the built-in set and custom folders.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

Point = tuple[float, float]
Matrix = tuple[float, float, float, float, float, float]  # SVG's (a, b, c, d, e, f)

IDENTITY: Matrix = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_TRANSFORM = re.compile(r"([a-zA-Z]+)\s*\(([^)]*)\)")
_SUPERSAMPLE = 4  # draw at 4× and downscale: smooth edges without an anti-aliasing renderer


@dataclass(frozen=True)
class SvgFigure:
    """The view box (min x, min y, width, height) and the polygons, transforms applied."""

    view_box: tuple[float, float, float, float]
    polygons: tuple[tuple[Point, ...], ...]
    polygon_ids: tuple[str, ...]


def _multiply(m: Matrix, n: Matrix) -> Matrix:
    """m ∘ n: apply n first, then m."""
    a, b, c, d, e, f = m
    a2, b2, c2, d2, e2, f2 = n
    return (
        a * a2 + c * b2,
        b * a2 + d * b2,
        a * c2 + c * d2,
        b * c2 + d * d2,
        a * e2 + c * f2 + e,
        b * e2 + d * f2 + f,
    )


def parse_transform(text: str | None) -> Matrix:
    """An SVG transform list (matrix, translate, scale, rotate, skewX, skewY) as one matrix."""
    result = IDENTITY
    if not text:
        return result
    for name, args in _TRANSFORM.findall(text):
        v = [float(x) for x in _NUMBER.findall(args)]
        name = name.lower()
        if name == "matrix" and len(v) == 6:
            m: Matrix = (v[0], v[1], v[2], v[3], v[4], v[5])
        elif name == "translate" and v:
            m = (1.0, 0.0, 0.0, 1.0, v[0], v[1] if len(v) > 1 else 0.0)
        elif name == "scale" and v:
            m = (v[0], 0.0, 0.0, v[1] if len(v) > 1 else v[0], 0.0, 0.0)
        elif name == "rotate" and v:
            r = math.radians(v[0])
            m = (math.cos(r), math.sin(r), -math.sin(r), math.cos(r), 0.0, 0.0)
            if len(v) == 3:  # rotate(angle, cx, cy) = translate(c) rotate translate(−c)
                cx, cy = v[1], v[2]
                m = _multiply(
                    _multiply((1.0, 0.0, 0.0, 1.0, cx, cy), m), (1.0, 0.0, 0.0, 1.0, -cx, -cy)
                )
        elif name == "skewx" and v:
            m = (1.0, 0.0, math.tan(math.radians(v[0])), 1.0, 0.0, 0.0)
        elif name == "skewy" and v:
            m = (1.0, math.tan(math.radians(v[0])), 0.0, 1.0, 0.0, 0.0)
        else:
            raise ValueError(f"unsupported SVG transform {name}({args})")
        result = _multiply(result, m)
    return result


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_svg(svg_text: str) -> SvgFigure:
    """The polygons of a tangram SVG, in view-box coordinates (nested ``<g>`` transforms too)."""
    root = ET.fromstring(svg_text.encode("utf-8") if isinstance(svg_text, str) else svg_text)
    if _local(root.tag) != "svg":
        raise ValueError("not an SVG document")
    polygons: list[tuple[Point, ...]] = []
    ids: list[str] = []

    def walk(element: ET.Element, matrix: Matrix) -> None:
        for child in element:
            tag = _local(child.tag)
            local = _multiply(matrix, parse_transform(child.get("transform")))
            if tag == "g":
                walk(child, local)
            elif tag in ("polygon", "polyline") and child.get("fill", "") != "none":
                numbers = [float(x) for x in _NUMBER.findall(child.get("points", ""))]
                a, b, c, d, e, f = local
                points = tuple(
                    (a * x + c * y + e, b * x + d * y + f)
                    for x, y in zip(numbers[0::2], numbers[1::2], strict=False)
                )
                if len(points) >= 3:
                    polygons.append(points)
                    ids.append(child.get("id", ""))

    walk(root, parse_transform(root.get("transform")))
    if not polygons:
        raise ValueError("the SVG has no polygon")
    return SvgFigure(
        view_box=_view_box(root, polygons), polygons=tuple(polygons), polygon_ids=tuple(ids)
    )


def _view_box(
    root: ET.Element, polygons: list[tuple[Point, ...]]
) -> tuple[float, float, float, float]:
    values = [float(x) for x in _NUMBER.findall(root.get("viewBox", ""))]
    if len(values) == 4 and values[2] > 0 and values[3] > 0:
        return values[0], values[1], values[2], values[3]
    width, height = root.get("width", ""), root.get("height", "")
    if _NUMBER.fullmatch(width or "") and _NUMBER.fullmatch(height or ""):
        return 0.0, 0.0, float(width), float(height)
    xs = [x for poly in polygons for x, _ in poly]
    ys = [y for poly in polygons for _, y in poly]
    return min(xs), min(ys), max(max(xs) - min(xs), 1e-9), max(max(ys) - min(ys), 1e-9)


def render_svg(svg_text: str, size: int = 224) -> Image.Image:
    """Black silhouette on a white ``size``×``size`` RGB image, view box fitted and centred."""
    figure = parse_svg(svg_text)
    big = size * _SUPERSAMPLE
    canvas = Image.new("L", (big, big), 255)
    draw = ImageDraw.Draw(canvas)
    min_x, min_y, width, height = figure.view_box
    scale = big / max(width, height)  # preserveAspectRatio="xMidYMid meet"
    off_x = (big - scale * width) / 2 - scale * min_x
    off_y = (big - scale * height) / 2 - scale * min_y
    for polygon in figure.polygons:
        draw.polygon([(off_x + scale * x, off_y + scale * y) for x, y in polygon], fill=0)
    return canvas.resize((size, size), Image.Resampling.LANCZOS).convert("RGB")


def load_raster(path: Path, size: int = 224) -> Image.Image:
    """A PNG (or any Pillow-readable image) on white, fitted into ``size``×``size``, centred."""
    with Image.open(path) as image:
        image.load()
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            flat.alpha_composite(rgba)
            image = flat
        rgb = image.convert("RGB")
    scale = size / max(rgb.width, rgb.height)
    fitted = rgb.resize(
        (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))),
        Image.Resampling.LANCZOS,
    )
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
    return canvas


def render_png(svg_text_or_path: str | Path, size: int = 224) -> Image.Image:
    """The ``size``×``size`` RGB image of a tangram: SVG text, an ``.svg`` path or a PNG path."""
    if isinstance(svg_text_or_path, str) and svg_text_or_path.lstrip().startswith("<"):
        return render_svg(svg_text_or_path, size)
    path = Path(svg_text_or_path)
    if path.suffix.lower() == ".svg":
        return render_svg(path.read_text(encoding="utf-8"), size)
    return load_raster(path, size)
