"""Shared fixtures: the reference data, a real PostgreSQL database per test session, and real
server processes (uvicorn subprocesses on loopback) that tests can kill and restart.

Skips under CI (``CI`` set, as ``.ci/run`` does): a skipped test is a test that did not run, so
under CI every skip fails the run unless its reason is on ``ALLOWED_SKIPS`` below; the run's
summary lists every skip with the allow-list entry that covers it.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest

from app import processes

ROOT = Path(__file__).resolve().parents[1]
ADMIN_TOKEN = "test-admin-token"
PG_ADMIN_DSN = os.environ.get("MULTIREF_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


# `make mutate` runs the property tests once per mutant (HYPOTHESIS_PROFILE=mutate): fewer
# examples, the same ones for every mutant (derandomized, no example database, so a survivor list
# is reproducible), and no shrinking: a mutant is killed by its first failing example, and
# shrinking it (tens of seconds for a mutant that breaks every game) would tell nobody anything.
try:
    from hypothesis import Phase as _HypothesisPhase
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile(
        "mutate",
        max_examples=25,
        deadline=None,
        derandomize=True,
        database=None,
        phases=(_HypothesisPhase.explicit, _HypothesisPhase.generate),
        report_multiple_bugs=False,
    )
except ImportError:  # pragma: no cover - the test extra installs it
    pass


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


# ---------------------------------------------------------------- skips under CI

# The only skips a CI run accepts: (pattern in the skip reason, why it may skip). Everything else
# that skips under CI (no PostgreSQL, no Chromium, a model package that does not import, a missing
# test dependency) fails the run.
RECORDED_GAMES_SKIP = "needs the recorded real games"
KILOGRAM_FILES_SKIP = "needs the KiloGram files themselves"
ALLOWED_SKIPS: tuple[tuple[str, str], ...] = (
    (
        RECORDED_GAMES_SKIP,
        "the 211 recorded ReSpect games are not in the repository (their licence); they are read "
        "from ../shared/reference or MULTIREF_REFERENCE_DIR",
    ),
    (
        "reference games not found",  # tests/test_policy_model.py's own loader, same data
        "the recorded ReSpect games (as above)",
    ),
    (
        KILOGRAM_FILES_SKIP,
        "checks the real KiloGram files (count, splits, SVG transforms), which cannot ship with "
        "the repository; every other test runs on the built-in set without them",
    ),
)


def allowed_skip(reason: str) -> str | None:
    """The allow-list entry that covers a skip reason, or None."""
    for pattern, _why in ALLOWED_SKIPS:
        if pattern in reason:
            return pattern
    return None


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return re.sub(r"^Skipped: ", "", str(longrepr[2]))
    return str(longrepr)


_SKIPS: list[tuple[str, str]] = []  # (test id, reason)


def _record_skip(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPS.append((report.nodeid, _skip_reason(report)))


def pytest_runtest_logreport(report) -> None:
    _record_skip(report)


def pytest_collectreport(report) -> None:
    _record_skip(report)  # a module-level skip (importorskip at import time)


def _disallowed() -> list[tuple[str, str]]:
    return [(nodeid, reason) for nodeid, reason in _SKIPS if allowed_skip(reason) is None]


def pytest_sessionfinish(session, exitstatus) -> None:
    if in_ci() and _disallowed() and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not _SKIPS:
        return
    tr = terminalreporter
    bad = _disallowed()
    tr.section("skips", sep="=", red=bool(bad and in_ci()), bold=True)
    by_pattern: dict[str, list[str]] = {}
    for nodeid, reason in _SKIPS:
        pattern = allowed_skip(reason)
        if pattern is not None:
            by_pattern.setdefault(pattern, []).append(nodeid)
    for pattern, why in ALLOWED_SKIPS:
        if pattern in by_pattern:
            tr.write_line(f"{len(by_pattern[pattern])} skipped, allowed ({pattern}): {why}")
    if bad:
        label = "NOT ALLOWED under CI, the run fails" if in_ci() else "would fail under CI=1"
        tr.write_line(f"{len(bad)} skipped, {label}:", red=True, bold=True)
        for nodeid, reason in bad:
            tr.write_line(f"  {nodeid}: {reason}", red=True)


def require(module: str):
    """``pytest.importorskip`` outside CI; under CI the import itself, so a broken install
    (a model package that fails to import) is an error with its traceback, never a skip."""
    if in_ci():
        import importlib

        return importlib.import_module(module)
    return pytest.importorskip(module)


# ---------------------------------------------------------------- reference data and tangrams


def reference_dir() -> Path:
    env = os.environ.get("MULTIREF_REFERENCE_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference() -> Path:
    """The shared reference folder with the recorded real games (may skip: allow-listed)."""
    ref = reference_dir()
    if not (ref / "respect_games" / "sep_12_24_sample.jsonl").is_file():
        pytest.skip(f"{RECORDED_GAMES_SKIP}: not found in {ref} (set MULTIREF_REFERENCE_DIR)")
    return ref


@pytest.fixture(scope="session")
def kilogram_dir(tmp_path_factory) -> Path:
    """A folder of tangram SVGs: the KiloGram reference copy when it is there, else the
    built-in set (same size, generated once per session), so no test needs ../shared for
    pictures."""
    ref = reference_dir() / "kilogram" / "tangrams-svg"
    if ref.is_dir() and any(ref.glob("*.svg")):
        return ref
    from app.tangrams import builtin

    folder = tmp_path_factory.mktemp("builtin-tangrams")
    builtin.write_set(folder)
    return folder


@pytest.fixture(scope="session")
def recorded_games(reference: Path) -> list[dict]:
    import json

    path = reference / "respect_games" / "sep_12_24_sample.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- PostgreSQL


def _pg_exec(sql: str, dsn: str = PG_ADMIN_DSN) -> None:
    import psycopg2

    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def _pg_available() -> bool:
    try:
        _pg_exec("SELECT 1")
        return True
    except Exception:
        return False


class PgDatabases:
    """Makes throw-away databases on the test PostgreSQL server, dropped at the end."""

    def __init__(self) -> None:
        self.made: list[str] = []
        base = PG_ADMIN_DSN.rsplit("/", 1)[0]
        self.base = base.replace("postgresql://", "postgresql+asyncpg://", 1)

    def new(self) -> str:
        name = f"mr_test_{uuid.uuid4().hex[:12]}"
        _pg_exec(f'CREATE DATABASE "{name}"')
        self.made.append(name)
        return f"{self.base}/{name}"

    def drop_all(self) -> None:
        for name in self.made:
            try:
                _pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception:
                pass


@pytest.fixture(scope="session")
def pg_databases():
    if not _pg_available():
        if in_ci():
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_DSN}")
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_DSN}")
    dbs = PgDatabases()
    yield dbs
    dbs.drop_all()


@pytest.fixture
def pg_url(pg_databases) -> str:
    return pg_databases.new()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'multiref.sqlite3'}"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path: Path) -> str:
    """Each test using this runs on both databases."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'multiref.sqlite3'}"
    return request.getfixturevalue("pg_databases").new()


# ---------------------------------------------------------------- server processes


class ServerProcess(processes.ServerProcess):
    """``multiref serve`` in a subprocess with the tests' settings: a tangram folder, the admin
    token, a fast sweeper, no per-address connection limit; ``env`` overrides any of them."""

    def __init__(
        self, database_url: str, tangrams: Path, log_dir: Path, args: tuple[str, ...] = (), **env: str
    ) -> None:
        defaults = {
            "MULTIREF_TANGRAMS": str(tangrams),
            "MULTIREF_ADMIN_TOKEN": ADMIN_TOKEN,
            "MULTIREF_SWEEP_INTERVAL_SECONDS": "0.2",
            "MULTIREF_MAX_CONNECTIONS_PER_ADDRESS": "0",
        }
        super().__init__(database_url, log_dir, env={**defaults, **env}, args=args)
        self.tangrams = tangrams


@pytest.fixture
def start_server(tmp_path: Path, kilogram_dir: Path):
    """Factory: start_server(database_url, args=(...), **env) -> ServerProcess (stopped at teardown)."""
    started: list[ServerProcess] = []

    def start(database_url: str, args: tuple[str, ...] = (), **env: str) -> ServerProcess:
        server = ServerProcess(database_url, kilogram_dir, tmp_path, args, **env).start()
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def server(start_server, database_url) -> ServerProcess:
    return start_server(database_url)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's in-process model work: intra-op threads spin against each
    other (and against the server and worker processes) on a small shared machine, up to 30x
    slower here; launched processes get the same through OMP_NUM_THREADS=1."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
