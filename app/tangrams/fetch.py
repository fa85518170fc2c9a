"""Download the KiloGram tangram SVGs from their public GitHub repository.

The images are digitised from J. Slocum, *The Tangram Book* (2003) and are distributed by
lil-lab/kilogram for research and education use under the copyright notice kept beside them
(``COPYRIGHT-COVER-SHEET.pdf``), so the project downloads them instead of shipping them.

The folder is listed through the GitHub git-trees API, walking one folder at a time (a recursive
listing of the whole repository can come back truncated), then every file is fetched from
raw.githubusercontent.com, a handful at a time. Files already present are skipped, so an
interrupted download resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

log = logging.getLogger("multiref.tangrams")

GITHUB_API = "https://api.github.com"
GITHUB_RAW = "https://raw.githubusercontent.com"
KILOGRAM_REPO = "lil-lab/kilogram"
KILOGRAM_REF = "main"
KILOGRAM_FOLDER = "dataset/tangrams-svg"
KILOGRAM_COUNT = 1013  # SVG files in the folder
COPYRIGHT_FILE = "COPYRIGHT-COVER-SHEET.pdf"
NOTICE_FILE = "NOTICE.txt"
_KEEP_SUFFIXES = (".svg", ".pdf")


class KilogramFetchError(RuntimeError):
    """The download could not be done (offline, blocked, rate-limited, repository moved …)."""


@dataclass(frozen=True)
class RemoteFile:
    name: str  # file name inside the folder
    path: str  # path inside the repository
    size: int | None


@dataclass(frozen=True)
class FetchReport:
    dest: Path
    downloaded: int
    skipped: int
    svg_count: int


def notice_text(repo: str, ref: str, folder: str) -> str:
    fetched = datetime.now(UTC).strftime("%Y-%m-%d")
    return (
        "KiloGram tangram images\n"
        "=======================\n\n"
        f"Downloaded on {fetched} from the public GitHub repository https://github.com/{repo}\n"
        f"(branch {ref}, folder {folder}).\n\n"
        "The images are digitised from J. Slocum, The Tangram Book (2003), and are provided by\n"
        "the KiloGram authors for research and education use only, under the copyright notice in\n"
        f"{COPYRIGHT_FILE}, kept in this folder. Keep that notice with the images, and do not\n"
        "redistribute them outside those terms.\n\n"
        "KiloGram: Ji et al., 'Abstract Visual Reasoning with Tangram Shapes', EMNLP 2022.\n"
    )


def _get(client: httpx.Client, url: str, what: str) -> httpx.Response:
    """GET with errors turned into one clear message (the caller may be a server starting up)."""
    try:
        response = client.get(url)
    except httpx.TimeoutException as error:
        raise KilogramFetchError(
            f"Timed out fetching {what} from {url}: the machine looks offline or the network "
            "is slow."
        ) from error
    except httpx.TransportError as error:
        raise KilogramFetchError(
            f"Could not reach {httpx.URL(url).host} to fetch {what} ({error.__class__.__name__}: "
            f"{error}). Is this machine offline? Download KiloGram on a machine with internet "
            "access and copy the folder here."
        ) from error
    if response.status_code in (403, 429):
        raise KilogramFetchError(
            f"GitHub refused {url} (HTTP {response.status_code}); this is usually the API rate "
            "limit for unauthenticated requests: wait an hour and run the command again "
            "(files already downloaded are kept)."
        )
    if response.status_code != 200:
        raise KilogramFetchError(f"Fetching {what} from {url} failed: HTTP {response.status_code}.")
    return response


def list_remote_files(
    client: httpx.Client,
    api_base: str = GITHUB_API,
    repo: str = KILOGRAM_REPO,
    ref: str = KILOGRAM_REF,
    folder: str = KILOGRAM_FOLDER,
) -> list[RemoteFile]:
    """The SVGs and the copyright sheet of ``folder``, via the git-trees API (a call a level)."""
    url = f"{api_base.rstrip('/')}/repos/{repo}/git/trees/{ref}"
    parts = [p for p in folder.strip("/").split("/") if p]
    for depth in range(len(parts) + 1):
        try:
            tree = _get(client, url, "the KiloGram file list").json()["tree"]
        except (ValueError, KeyError, TypeError) as error:
            raise KilogramFetchError(
                f"Unexpected answer from {url}: not a git tree listing."
            ) from error
        if depth == len(parts):
            break
        match = [e for e in tree if e.get("path") == parts[depth] and e.get("type") == "tree"]
        if not match:
            raise KilogramFetchError(f"{repo}@{ref} has no folder {'/'.join(parts[: depth + 1])}.")
        url = f"{api_base.rstrip('/')}/repos/{repo}/git/trees/{match[0]['sha']}"
    files = [
        RemoteFile(name=e["path"], path=f"{'/'.join(parts)}/{e['path']}", size=e.get("size"))
        for e in tree
        if e.get("type") == "blob" and str(e.get("path", "")).lower().endswith(_KEEP_SUFFIXES)
    ]
    if not any(f.name.lower().endswith(".svg") for f in files):
        raise KilogramFetchError(f"{repo}@{ref}:{folder} holds no SVG file.")
    return sorted(files, key=lambda f: f.name)


def _is_complete(path: Path, expected_size: int | None) -> bool:
    try:
        size = path.stat().st_size
    except OSError:
        return False
    return size > 0 and (expected_size is None or size == expected_size)


def _download(client: httpx.Client, url: str, target: Path, retries: int = 2) -> None:
    """Write ``url`` to ``target`` through a temporary file, so a partial file never counts."""
    last: KilogramFetchError | None = None
    for _ in range(retries + 1):
        try:
            response = _get(client, url, target.name)
            handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".part-")
            with os.fdopen(handle, "wb") as out:
                out.write(response.content)
            os.replace(temporary, target)
            return
        except KilogramFetchError as error:
            last = error
    assert last is not None
    raise last


def fetch_kilogram(
    dest: Path,
    progress: bool = True,
    timeout: float = 30.0,
    *,
    api_base: str = GITHUB_API,
    raw_base: str = GITHUB_RAW,
    repo: str = KILOGRAM_REPO,
    ref: str = KILOGRAM_REF,
    folder: str = KILOGRAM_FOLDER,
    concurrency: int = 8,
) -> FetchReport:
    """Download the KiloGram SVGs (and their copyright sheet) into ``dest``; resumable.

    Raises :class:`KilogramFetchError` with a message meant for the person running it.
    """
    dest = Path(dest)
    headers = {"User-Agent": "multiref-live", "Accept": "application/vnd.github+json"}
    with httpx.Client(timeout=timeout, headers=headers, follow_redirects=True) as client:
        files = list_remote_files(client, api_base, repo, ref, folder)
        if not any(f.name == COPYRIGHT_FILE for f in files):
            raise KilogramFetchError(
                f"{repo}@{ref}:{folder} has no {COPYRIGHT_FILE}; the images may not be used "
                "without it, so nothing was downloaded."
            )
        dest.mkdir(parents=True, exist_ok=True)
        todo = [f for f in files if not _is_complete(dest / f.name, f.size)]
        skipped = len(files) - len(todo)
        log.info(
            "KiloGram: %d files listed, %d already here, %d to download",
            len(files),
            skipped,
            len(todo),
        )
        failures: list[str] = []
        with Progress(
            TextColumn("[bold]KiloGram"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            disable=not progress,
            transient=False,
        ) as bar:
            task = bar.add_task("download", total=len(files), completed=skipped)
            with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
                futures = {
                    pool.submit(
                        _download,
                        client,
                        f"{raw_base.rstrip('/')}/{repo}/{ref}/{f.path}",
                        dest / f.name,
                    ): f
                    for f in todo
                }
                for future in as_completed(futures):
                    error = future.exception()
                    if error is not None:
                        failures.append(f"{futures[future].name}: {error}")
                    bar.advance(task)
    if failures:
        raise KilogramFetchError(
            f"{len(failures)} of {len(todo)} KiloGram files could not be downloaded (run the same "
            f"command again to resume); first error: {failures[0]}"
        )
    (dest / NOTICE_FILE).write_text(notice_text(repo, ref, folder), encoding="utf-8")
    svg_count = sum(1 for p in dest.glob("*.svg"))
    log.info("KiloGram: %d SVG files in %s", svg_count, dest)
    return FetchReport(dest=dest, downloaded=len(todo), skipped=skipped, svg_count=svg_count)
