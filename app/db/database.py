"""The database connection: async engine, migrations on start, shared secrets."""

from __future__ import annotations

import asyncio
import logging
import secrets
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

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


class Database:
    def __init__(self, url: str, pool_size: int = 10) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size)
        self.session = async_sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def describe(self) -> str:
        """The database kind and where, without credentials."""
        u = self.engine.url
        if self.dialect == "sqlite":
            return f"sqlite:{u.database}"
        return f"{self.dialect}://{u.host}:{u.port}/{u.database}"

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
        await self.engine.dispose()
