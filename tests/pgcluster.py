"""A private PostgreSQL cluster for tests that stop and restart the database.

The shared server on 127.0.0.1:5432 serves other test suites and is never touched; fault tests
that restart PostgreSQL mid-game run their own cluster: ``initdb`` into a temporary folder (as
the ``postgres`` user when running as root, since initdb refuses root), trust authentication,
listening on a free loopback port only.

    cluster = PrivateCluster.create(tmp_dir)
    url = cluster.new_database()          # postgresql+asyncpg://postgres@127.0.0.1:PORT/mr_…
    cluster.restart(down_seconds=2)       # fast shutdown, a pause, start again (same port)
    cluster.destroy()

The ``private_pg`` fixture gives one cluster per test session; it is skipped when no PostgreSQL
binaries are found (set ``MULTIREF_PG_BIN`` to their folder).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from app.processes import free_port
from tests.conftest import in_ci

def _version_key(folder: Path) -> tuple:
    """Sort key of ``/usr/lib/postgresql/<version>/bin``: numeric parts first (9.6 < 10 < 17)."""
    parts = re.findall(r"\d+|\D+", folder.parent.name)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


PG_LIB = Path("/usr/lib/postgresql")  # Debian/Ubuntu: one <version>/bin per installed server


def candidate_bins(root: Path = PG_LIB) -> list[Path]:
    """``MULTIREF_PG_BIN`` first, then every installed version, newest first."""
    found = [Path(os.environ["MULTIREF_PG_BIN"])] if os.environ.get("MULTIREF_PG_BIN") else []
    found += sorted(root.glob("*/bin"), key=_version_key, reverse=True)
    return found


def find_bin(root: Path = PG_LIB) -> Path | None:
    for folder in candidate_bins(root):
        if (folder / "initdb").is_file():
            return folder
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PrivateCluster:
    def __init__(self, root: Path, bin_dir: Path, port: int) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.bin = bin_dir
        self.port = port
        self.as_user: str | None = "postgres" if os.geteuid() == 0 else None

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def create(cls, parent: Path | None = None, port: int | None = None) -> "PrivateCluster":
        bin_dir = find_bin()
        if bin_dir is None:
            raise FileNotFoundError("no PostgreSQL binaries (initdb) found; set MULTIREF_PG_BIN")
        root = Path(tempfile.mkdtemp(prefix="mr-pg-", dir=parent))
        cluster = cls(root, bin_dir, port or free_port())
        if cluster.as_user:
            pw = pwd.getpwnam(cluster.as_user)
            os.chown(root, pw.pw_uid, pw.pw_gid)
        cluster._run(
            [str(bin_dir / "initdb"), "-D", str(cluster.data), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--no-sync"]
        )
        conf = cluster.data / "postgresql.conf"
        with open(conf, "a") as f:
            f.write(
                "\n# private test cluster (tests/pgcluster.py)\n"
                f"listen_addresses = '127.0.0.1'\nport = {cluster.port}\n"
                f"unix_socket_directories = '{root}'\n"
                "max_connections = 200\nshared_buffers = 32MB\n"
                "logging_collector = off\n"
            )
        cluster.start()
        return cluster

    def _run(self, args: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        if self.as_user:
            args = ["runuser", "-u", self.as_user, "--", *args]
        return subprocess.run(args, check=check, capture_output=True, text=True, timeout=timeout)

    def pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self._run(
            [str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), *args], check=check
        )

    def start(self, timeout: float = 30) -> None:
        self.pg_ctl("start", "-w", "-t", str(int(timeout)))
        self.wait_ready(timeout)

    def stop(self, mode: str = "fast") -> None:
        """``fast``: roll back and disconnect every session; ``immediate``: a crash."""
        self.pg_ctl("stop", "-m", mode, "-w", check=False)

    def restart(self, down_seconds: float = 2.0, mode: str = "fast") -> None:
        self.stop(mode)
        time.sleep(down_seconds)
        self.start()

    def is_ready(self) -> bool:
        try:
            import psycopg2

            psycopg2.connect(self.dsn(), connect_timeout=1).close()
            return True
        except Exception:
            return False

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.is_ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"private PostgreSQL did not come up: {self.log_tail()}")

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # ------------------------------------------------------------ databases

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def url(self, database: str) -> str:
        """The SQLAlchemy URL the server takes (asyncpg driver)."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg2

        name = f"mr_{uuid.uuid4().hex[:12]}"
        conn = psycopg2.connect(self.dsn())
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.url(name)


@pytest.fixture(scope="session")
def private_pg():
    if find_bin() is None:
        if in_ci():
            pytest.fail("no PostgreSQL binaries (initdb) for a private cluster (set MULTIREF_PG_BIN)")
        pytest.skip("no PostgreSQL binaries for a private cluster (set MULTIREF_PG_BIN)")
    # in the system temp folder, not pytest's: the postgres user must be able to reach it
    cluster = PrivateCluster.create()
    yield cluster
    cluster.destroy()
