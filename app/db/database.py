"""The database connection: async engine, migrations on start, shared secrets."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import sqlite3
from contextlib import asynccontextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from app.db.models import Secret

log = logging.getLogger("multiref.db")

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


class DatabaseBehind(RuntimeError):
    """The schema is older than this code and migrating on start is off."""


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["database_url"] = url
    return cfg


def _ensure_sqlite_folder(url: str) -> None:
    if url.startswith("sqlite") and ":///" in url and ":memory:" not in url:
        path = Path(url.split(":///", 1)[1])
        path.parent.mkdir(parents=True, exist_ok=True)


def make_engine(url: str, pool_size: int = 10) -> AsyncEngine:
    _ensure_sqlite_folder(url)
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # WAL: readers never block the writer
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_async_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, pool_recycle=1800
    )


# The event log's hot path (``GameHub`` appending a player's action) bypasses the ORM session:
# on SQLite it writes through one plain sqlite3 connection synchronously on the event loop (no
# thread hop, never waits for a lock), on PostgreSQL through a small asyncpg pool of its own
# (prepared statements, no pre-ping round trips). See ``app.live.store``.
CHECKPOINT_EVERY = 200  # direct SQLite commits between two WAL checkpoints (run off the loop)
# WAL frames (pages) after which a checkpoint also starts the log over: a passive checkpoint
# never does while commits keep coming, so under steady load the WAL grew without end (2.3 GB in
# a 15-minute soak, its index mapped into the server's memory: bench/README.md, issue 14 fourth pass)
WAL_RESTART_FRAMES = 8192
_DOLLAR_PARAM = re.compile(r"\$\d+")


class Database:
    def __init__(self, url: str, pool_size: int = 10, commit_pool_size: int | None = None) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size)
        self.session = async_sessionmaker(self.engine, expire_on_commit=False)
        self.pool_size = pool_size
        self.commit_pool_size = commit_pool_size or pool_size  # the asyncpg pool's
        self._sqlite_writer: sqlite3.Connection | None = None
        self._direct_commits = 0
        self._checkpointing = False
        self._pg_pool = None
        self._pg_pool_lock = asyncio.Lock()

    # ------------------------------------------------------------ direct writers (hot path)

    def _sqlite_file(self) -> str | None:
        u = self.engine.url
        if self.dialect != "sqlite" or u.query or not u.database or ":memory:" in u.database:
            return None
        if u.database.startswith("file:"):
            return None
        return u.database

    def sqlite_writer(self) -> sqlite3.Connection | None:
        """A plain sqlite3 connection for short write transactions run synchronously on the
        event loop (SQLite files only, else None). It never waits for a lock (busy timeout 0:
        callers wait with short sleeps instead of blocking the loop) and never checkpoints on
        the loop: call :meth:`sqlite_committed` after each commit, which checkpoints in a
        thread now and then."""
        if self._sqlite_writer is None:
            path = self._sqlite_file()
            if path is None:
                return None
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0)
            conn.execute("PRAGMA busy_timeout=0")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._sqlite_writer = conn
        return self._sqlite_writer

    def sqlite_committed(self) -> None:
        self._direct_commits += 1
        if self._direct_commits % CHECKPOINT_EVERY or self._checkpointing:
            return
        self._checkpointing = True
        future = asyncio.get_running_loop().run_in_executor(None, self._checkpoint)
        future.add_done_callback(self._checkpointed)

    def _checkpointed(self, future) -> None:
        self._checkpointing = False
        if not future.cancelled() and future.exception() is not None:
            log.warning("WAL checkpoint failed: %s", future.exception())

    def _checkpoint(self) -> None:
        """Copy the WAL into the database without stopping the writer (PASSIVE). Commits made
        meanwhile stay in the log, so the writer never finds it fully copied and never starts
        it over: once it holds ``WAL_RESTART_FRAMES`` frames, copy the rest and truncate it
        (TRUNCATE: the writer waits, with short sleeps, for the few frames written since the
        passive copy; readers are not stopped)."""
        conn = sqlite3.connect(self._sqlite_file(), timeout=30)
        try:
            _busy, frames, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames >= WAL_RESTART_FRAMES:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.close()

    async def _asyncpg_pool(self):
        if self._pg_pool is None:
            async with self._pg_pool_lock:
                if self._pg_pool is None:
                    import asyncpg

                    async def no_reset(_conn) -> None:  # every use ends its own transaction
                        return None

                    dsn = self.engine.url.render_as_string(hide_password=False).replace(
                        "postgresql+asyncpg://", "postgresql://", 1
                    )
                    self._pg_pool = await asyncpg.create_pool(
                        dsn, min_size=0, max_size=max(2, self.commit_pool_size), reset=no_reset
                    )
        return self._pg_pool

    @asynccontextmanager
    async def asyncpg_connection(self):
        """A connection of the database's own asyncpg pool (PostgreSQL only), for the hot path:
        no pre-ping round trips, prepared statements. Callers own their transactions."""
        pool = await self._asyncpg_pool()
        async with pool.acquire() as conn:
            yield conn

    async def fetch(self, query: str, *args) -> list | None:
        """Rows (mappings by column name) of a read-only ``query`` with ``$1``-style parameters,
        through the hot path's driver connections: the SQLite writer connection (readers never
        wait in WAL mode) or the asyncpg pool. None when neither is available or SQLite is busy:
        then read through a session."""
        if self.dialect == "sqlite":
            conn = self.sqlite_writer()
            if conn is None:
                return None
            cursor = conn.cursor()
            cursor.row_factory = sqlite3.Row
            try:
                return cursor.execute(_DOLLAR_PARAM.sub("?", query), args).fetchall()
            except sqlite3.OperationalError:
                return None
            finally:
                cursor.close()
        if self.dialect == "postgresql":
            import asyncpg

            for attempt in (1, 2):
                try:
                    async with self.asyncpg_connection() as conn:
                        return await conn.fetch(query, *args)
                except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError):
                    if attempt == 2:
                        raise
                    await self.expire_asyncpg_connections()
        return None

    async def expire_asyncpg_connections(self) -> None:
        """After a connection error: replace every pooled connection (the server restarted).
        asyncpg's ``expire_connections`` is a coroutine: called without ``await`` it did nothing."""
        if self._pg_pool is not None:
            await self._pg_pool.expire_connections()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def describe(self) -> str:
        """The database kind and where, without credentials."""
        u = self.engine.url
        if self.dialect == "sqlite":
            return f"sqlite:{u.database}"
        return f"{self.dialect}://{u.host}:{u.port or 5432}/{u.database}"

    async def current_revision(self) -> str | None:
        async with self.engine.connect() as conn:
            return await conn.run_sync(
                lambda c: MigrationContext.configure(c).get_current_revision()
            )

    def head_revision(self) -> str | None:
        return ScriptDirectory.from_config(alembic_config(self.url)).get_current_head()

    async def migrate(self, auto: bool = True) -> None:
        """Bring the schema to the code's revision, or refuse with a clear message."""
        current, head = await self.current_revision(), self.head_revision()
        if current == head:
            return
        if not auto:
            raise DatabaseBehind(
                f"The database {self.describe()} is at schema revision {current or 'none'}, "
                f"this code needs {head}. Run `multiref db upgrade` (back up first), "
                "or start with MULTIREF_AUTO_MIGRATE=true."
            )
        log.info("migrating %s from %s to %s", self.describe(), current or "empty", head)
        # Alembic's env.py runs its own event loop: give it a thread.
        await asyncio.to_thread(command.upgrade, alembic_config(self.url), "head")

    async def secret(self, name: str) -> str:
        """A random secret made once and kept in the database, shared by all processes."""
        async with self.session() as s:
            row = await s.get(Secret, name)
            if row is not None:
                return row.value
            value = secrets.token_urlsafe(32)
            s.add(Secret(name=name, value=value))
            try:
                await s.commit()
                return value
            except IntegrityError:  # another process made it first
                await s.rollback()
        async with self.session() as s:
            return (await s.execute(select(Secret.value).where(Secret.name == name))).scalar_one()

    async def close(self) -> None:
        if self._sqlite_writer is not None:
            self._sqlite_writer.close()
            self._sqlite_writer = None
        if self._pg_pool is not None:
            await self._pg_pool.close()
            self._pg_pool = None
        await self.engine.dispose()
