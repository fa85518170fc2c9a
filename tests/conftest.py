"""Shared fixtures: the reference data, a real PostgreSQL database per test session, and real
server processes (uvicorn subprocesses on loopback) that tests can kill and restart."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from app import processes

ROOT = Path(__file__).resolve().parents[1]
ADMIN_TOKEN = "test-admin-token"
PG_ADMIN_DSN = os.environ.get("MULTIREF_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def reference_dir() -> Path:
    env = os.environ.get("MULTIREF_REFERENCE_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference() -> Path:
    ref = reference_dir()
    if not (ref / "kilogram" / "tangrams-svg").is_dir():
        pytest.skip(f"reference data not found at {ref} (set MULTIREF_REFERENCE_DIR)")
    return ref


@pytest.fixture(scope="session")
def kilogram_dir(reference: Path) -> Path:
    return reference / "kilogram" / "tangrams-svg"


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
        if os.environ.get("CI"):
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
