"""Tangram sets on disk, their splits, and which set a server uses.

A set is a folder of image files (``.svg`` or ``.png``); a tangram's id is its file name without
extension. That is the one id the database holds, whatever the source: the public ReSpect release
writes ids as file names (``page7-40.png``), so import strips the extension (:func:`canonical_id`)
and export adds it back (:func:`release_id`) for every game, live or imported.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from app.tangrams import builtin
from app.tangrams.fetch import KILOGRAM_COUNT, KilogramFetchError, fetch_kilogram

log = logging.getLogger("multiref.tangrams")

MEDIA_TYPES = {".svg": "image/svg+xml", ".png": "image/png"}
RELEASE_SUFFIX = ".png"  # how the public release names a tangram: its PNG file's name


def canonical_id(tid: str) -> str:
    """A tangram id without an image file extension: ``page7-40.png`` -> ``page7-40``."""
    for suffix in MEDIA_TYPES:
        if len(tid) > len(suffix) and tid.lower().endswith(suffix):
            return tid[: -len(suffix)]
    return tid


def release_id(tid: str) -> str:
    """A tangram id as the public release writes it: ``page7-40`` -> ``page7-40.png``."""
    return canonical_id(tid) + RELEASE_SUFFIX
DOWNLOAD_TIMEOUT = 5.0  # seconds per request when the server tries KiloGram on start-up


_warned: set[Path] = set()


def _warn_builtin_once(builtin_dir: Path, n: int, reason: str) -> None:
    """One log line per process (a server with an embedded worker resolves its set twice)."""
    if builtin_dir in _warned:
        return
    _warned.add(builtin_dir)
    short = " ".join(reason.split())
    for stop in (". ", "? "):
        short = short.split(stop, 1)[0]
    log.warning(
        "KiloGram unavailable (%s): using the built-in set of %d generated tangrams in %s; "
        "for KiloGram run `multiref tangrams fetch DIR` online, then set MULTIREF_TANGRAMS=DIR "
        "or pass --tangrams DIR",
        short.rstrip("."), n, builtin_dir,
    )


class TangramSetError(ValueError):
    """A tangram folder or splits file that cannot be used, with a message saying why."""


class TangramSet:
    """A folder of tangram images, indexed once by id."""

    def __init__(self, folder: Path) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise TangramSetError(f"Tangram folder {folder} does not exist (or is not a folder).")
        files: dict[str, Path] = {}
        for path in sorted(folder.iterdir()):
            if (
                path.suffix.lower() not in MEDIA_TYPES
                or not path.is_file()
                or path.name.startswith(".")
            ):
                continue
            if path.stem in files:
                raise TangramSetError(
                    f"Tangram id {path.stem!r} has two files in {folder}: "
                    f"{files[path.stem].name} and {path.name}; keep one."
                )
            files[path.stem] = path
        if not files:
            raise TangramSetError(f"Tangram folder {folder} holds no .svg or .png file.")
        self.folder = folder
        self._files = files
        self._ids = sorted(files)

    def ids(self) -> list[str]:
        return list(self._ids)

    def path(self, tid: str) -> Path:
        try:
            return self._files[tid]
        except KeyError:
            raise KeyError(f"no tangram {tid!r} in {self.folder}") from None

    def media_type(self, tid: str) -> str:
        return MEDIA_TYPES[self.path(tid).suffix.lower()]

    def __contains__(self, tid: object) -> bool:
        return tid in self._files

    def __len__(self) -> int:
        return len(self._files)

    def __repr__(self) -> str:
        return f"TangramSet({str(self.folder)!r}, {len(self)} tangrams)"


def load_splits(path: Path) -> dict[str, list[str]]:
    """A JSON file ``{split: [tangram ids]}`` (the MultiRef split: dev, train, test)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise TangramSetError(f"Cannot read the splits file {path}: {error}") from error
    except ValueError as error:
        raise TangramSetError(f"The splits file {path} is not valid JSON: {error}") from error
    if not isinstance(data, dict) or not all(
        isinstance(ids, list) and all(isinstance(t, str) for t in ids) for ids in data.values()
    ):
        raise TangramSetError(f"The splits file {path} must map each split to a list of ids.")
    return {str(name): list(ids) for name, ids in data.items()}


def _svg_count(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*.svg")) if folder.is_dir() else 0


def resolve_tangram_set(
    folder: Path | None,
    cache_dir: Path,
    allow_download: bool = True,
    *,
    download_timeout: float = DOWNLOAD_TIMEOUT,
    builtin_n: int = 1013,
    builtin_seed: int = 0,
) -> TangramSet:
    """The set a server uses: ``folder`` if given, else KiloGram from the cache, else built-in.

    A configured folder that is missing or empty is an error (a typo must not silently switch
    the images people see). Without one, KiloGram is downloaded once into ``cache_dir/kilogram``;
    when that fails (offline), the built-in figures are generated into ``cache_dir/builtin``.
    """
    if folder is not None:
        return TangramSet(Path(folder))
    cache_dir = Path(cache_dir)
    kilogram_dir = cache_dir / "kilogram"
    if _svg_count(kilogram_dir) >= KILOGRAM_COUNT:
        return TangramSet(kilogram_dir)
    if allow_download:
        try:
            fetch_kilogram(kilogram_dir, progress=False, timeout=download_timeout)
            return TangramSet(kilogram_dir)
        except KilogramFetchError as error:
            reason = str(error)
    else:
        reason = "download disabled"
    builtin_dir = cache_dir / "builtin"
    if not builtin.is_current(builtin_dir, builtin_n, builtin_seed):
        builtin.write_set(builtin_dir, builtin_n, builtin_seed)
    _warn_builtin_once(builtin_dir, builtin_n, reason)
    return TangramSet(builtin_dir)
