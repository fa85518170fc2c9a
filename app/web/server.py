"""The FastAPI application: wiring of database, bus, hub, lobby and sweeper in a lifespan."""

from __future__ import annotations

import inspect

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.db.database import Database
from app.game.configs import ConfigQueue, keyed_seed
from app.live.bus import Bus, PostgresBus, asyncpg_dsn
from app.live.hub import GameHub
from app.live.lobby import Lobby, LobbyPolicy
from app.live.model_listener import ModelListenerDriver
from app.live.sweeper import Sweeper
from app.settings import Settings
from app.tangrams.store import TangramSet, load_splits, resolve_tangram_set
from app.web.auth import ParticipantTokens, token_digest
from app.web.guards import RefuseNul

log = logging.getLogger("multiref.server")

ROOT = Path(__file__).resolve().parents[2]


def _no_telemetry() -> dict:
    """FastAPI's own OpenTelemetry hooks off (``telemetry=``, FastAPI 0.16x): nothing here
    configures OpenTelemetry, and asking on every request and websocket whether it is
    configured cost 2 % of the server's CPU at 500 games. Older FastAPI has no such hooks."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


class ConnectionLimiter:
    """Caps concurrent websockets per client address."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: Counter[str] = Counter()

    def acquire(self, address: str) -> bool:
        if self.limit and self.counts[address] >= self.limit:
            return False
        self.counts[address] += 1
        return True

    def release(self, address: str) -> None:
        self.counts[address] -= 1
        if self.counts[address] <= 0:
            del self.counts[address]


class PrivateAccessLog(logging.Filter):
    """uvicorn's access lines (HTTP on ``uvicorn.access``, websockets on ``uvicorn.error``)
    without query strings (study links carry raw worker ids) and, unless
    ``MULTIREF_LOG_CLIENT_IPS`` is on, without the client's address (personal data)."""

    def __init__(self, log_ips: bool) -> None:
        super().__init__()
        self.log_ips = log_ips

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple) or len(args) < 2:
            return True
        if record.name == "uvicorn.access" and len(args) >= 3:
            path_at = 2
        elif record.name == "uvicorn.error" and '"WebSocket %s"' in str(record.msg):
            path_at = 1
        else:
            return True
        new = list(args)
        if isinstance(new[path_at], str):
            new[path_at] = new[path_at].split("?", 1)[0]
        if not self.log_ips:
            new[0] = "-"
        record.args = tuple(new)
        return True


def install_log_filters(settings: Settings) -> None:
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, PrivateAccessLog)]:
            logger.removeFilter(old)
        logger.addFilter(PrivateAccessLog(settings.log_client_ips))


@dataclass
class Services:
    settings: Settings
    db: Database
    bus: Bus
    hub: GameHub
    lobby: Lobby
    sweeper: Sweeper
    tangrams: TangramSet
    tokens: ParticipantTokens
    hash_key: str
    connections: ConnectionLimiter
    model_listener: ModelListenerDriver
    admin_digests: list[str] = field(default_factory=list)
    background: list = field(default_factory=list)  # extra (start, stop) pairs, e.g. a worker


def tangram_pool(tangrams: TangramSet, settings: Settings) -> list[str]:
    """The ids games draw from: the configured split of the set, or the whole set."""
    ids = tangrams.ids()
    splits_file = settings.splits_file
    if splits_file is None and (tangrams.folder / "splits.json").is_file():
        splits_file = tangrams.folder / "splits.json"  # the built-in set ships its own split
    if splits_file:
        split = set(load_splits(splits_file)[settings.split])
        pool = [t for t in ids if t in split]
        if len(pool) < settings.rules.num_images:
            raise SystemExit(
                f"The {settings.split} split has {len(pool)} tangrams in {tangrams}; "
                f"a game needs {settings.rules.num_images}."
            )
        return pool
    return ids


async def build_services(settings: Settings) -> Services:
    db = Database(settings.database_url, settings.db_pool_size, settings.db_commit_pool_size)
    await db.migrate(auto=settings.auto_migrate)
    hash_key = settings.secret_key or await db.secret("worker_hash_key")
    token_key = settings.secret_key or await db.secret("token_key")
    tangrams = resolve_tangram_set(settings.tangrams, ROOT / "var" / "tangrams")
    pool = tangram_pool(tangrams, settings)
    hub_holder: list[GameHub] = []

    async def on_reconnect() -> None:
        if hub_holder:
            await hub_holder[0].catch_up()

    bus: Bus = (
        PostgresBus(asyncpg_dsn(settings.database_url), on_reconnect=on_reconnect)
        if db.dialect == "postgresql"
        else Bus()
    )
    hub = GameHub(db, bus)
    hub.prolific_code = settings.prolific_completion_code
    hub_holder.append(hub)
    policy = LobbyPolicy(
        listener=settings.listener,
        timeout_seconds=settings.lobby_timeout_seconds,
        fallback=settings.lobby_fallback,
        system=settings.model_system,
        role_assignment=settings.role_assignment,
    )
    config_key = settings.secret_key or await db.secret("config_key")
    configs = ConfigQueue(pool, keyed_seed(config_key, settings.config_seed), settings.rules)
    lobby = Lobby(db, bus, settings.rules, configs, policy, split=settings.split)
    lobby.present_ids = lambda: [
        pid for pid, conns in hub.participant_conns.items() if any(c.game_id is None for c in conns)
    ]
    admin = list(settings.admin_token_sha256)
    if settings.admin_token:
        admin.append(token_digest(settings.admin_token))
    return Services(
        settings=settings,
        db=db,
        bus=bus,
        hub=hub,
        lobby=lobby,
        sweeper=Sweeper(hub, lobby, settings.sweep_interval_seconds),
        tangrams=tangrams,
        tokens=ParticipantTokens(token_key),
        hash_key=hash_key,
        connections=ConnectionLimiter(settings.max_connections_per_address),
        model_listener=ModelListenerDriver(hub, settings.click_delay_seconds),
        admin_digests=admin,
    )


BackgroundFactory = Callable[[Services], tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]]


def create_app(
    settings: Settings | None = None, background: list[BackgroundFactory] | None = None
) -> FastAPI:
    """The application. ``background``: factories of extra (start, stop) pairs run in the
    lifespan, such as an embedded policy worker (``multiref serve --with-worker``)."""
    settings = settings or Settings()
    problem = settings.production_problem()
    if problem:
        raise SystemExit(f"Refusing to start: {problem}")
    install_log_filters(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        services = await build_services(settings)
        app.state.services = services
        await services.bus.start()
        await services.lobby.clear_ghosts()  # waiting rows left by a killed process
        await services.sweeper.start()
        await services.model_listener.start()
        services.background = [factory(services) for factory in background or []]
        for start, _ in services.background:
            await start()
        log.info(
            "MultiRef Live serving on %s (database %s, %d tangrams)",
            settings.url(), services.db.describe(), len(services.tangrams),
        )
        try:
            yield
        finally:
            for _, stop in reversed(services.background):
                await stop()
            await services.model_listener.stop()
            await services.sweeper.stop()
            await services.bus.stop()
            await services.db.close()

    from app import __version__
    from app.web import admin, annotate, api, dashboard, operator, pages, play

    app = FastAPI(title="MultiRef Live", version=__version__, lifespan=lifespan, **_no_telemetry())
    app.add_middleware(RefuseNul, max_body=settings.max_body_bytes)
    app.include_router(api.router)
    app.include_router(play.router)
    app.include_router(admin.router)
    app.include_router(operator.router)
    app.include_router(dashboard.router)
    app.include_router(annotate.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=ROOT / "static"), name="static")
    return app
