"""Every setting of the platform, in one pydantic-settings class read from the environment.

Variables are prefixed ``MULTIREF_`` (``MULTIREF_DATABASE_URL``, ``MULTIREF_TANGRAMS`` …); a
``.env`` file in the working directory is read too. Game rules live in ``GameRules`` and take
their overrides from ``MULTIREF_RULES__<FIELD>`` (for example ``MULTIREF_RULES__MAX_TURNS=8``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.game.rules import GameRules


WEAK_SECRETS = frozenset({"change-me", "changeme", "secret", "test", "default", "example"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MULTIREF_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    # --- database
    database_url: str = Field(
        default="sqlite+aiosqlite:///./var/multiref.sqlite3",
        description="SQLAlchemy URL: SQLite by default, postgresql+asyncpg://… in production.",
    )
    db_pool_size: int = 10
    db_commit_pool_size: int | None = Field(
        default=16,
        description="PostgreSQL: connections of the live tier's own asyncpg pool (group commits "
        "of actions, game creations, hot-path reads); None: db_pool_size. Apart from the ORM's "
        "pool so that it can grow alone. 16 leaves room beside the 4 creations and 6 group "
        "statements a process runs at once (bench/README.md, issue 14 fifth pass: 16 against 10 "
        "at 500 games, back to back: p99 554 against 593 ms, game start p99 1.7 against 2.6 s).",
    )
    auto_migrate: bool = True  # migrate the database on start, or refuse if it is behind

    # --- web
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str = ""  # used in links shown to people; defaults to http://host:port
    secret_key: str = Field(
        default="",
        description="Signs seat tokens and keys worker-id hashes. Empty: a random key is made "
        "once and kept in the database, so every server process shares it.",
    )
    admin_token: str = Field(
        default="", description="Bearer token for admin and operator routes (kept only hashed)."
    )
    admin_token_sha256: list[str] = Field(
        default_factory=list, description="SHA-256 hex digests of further admin tokens."
    )
    max_frame_bytes: int = 8192
    gc_freeze: bool = Field(
        default=True,
        description="`serve`: move the objects made at startup out of the cyclic collector's "
        "reach (gc.freeze) before serving, so its full collections, which stop the server, "
        "scan only what serving made (bench/README.md, issue 14 third pass).",
    )
    gc_thresholds: list[int] = Field(
        default_factory=lambda: [700, 10, 10],
        description="`serve`: the cyclic collector's thresholds (gc.set_threshold); the third "
        "sets how rarely a full collection may run.",
    )
    malloc_trim: bool = Field(
        default=True,
        description="`serve`: after each full cyclic collection, return the memory glibc keeps "
        "free inside its heap to the kernel (malloc_trim), so that resident memory follows "
        "what the server holds, not the most it ever held (bench/README.md, issue 14 fourth pass).",
    )
    malloc_trim_seconds: float = Field(
        default=60.0, description="`serve`: the least time between two heap trims (each stops the loop ~10-40 ms)."
    )
    max_body_bytes: int = Field(
        default=1_048_576, description="Largest HTTP request body accepted (413 beyond it)."
    )
    max_sockets_per_participant: int = 8  # open websockets one seat token may hold at once
    log_client_ips: bool = False  # client addresses in access logs (personal data: off)
    max_messages_per_second: float = 20.0  # per connection, burst of twice that
    max_connections_per_address: int = 50

    # --- tangrams and game configs
    tangrams: Path | None = Field(
        default=None, description="Folder of tangram SVG or PNG files (KiloGram or your own)."
    )
    splits_file: Path | None = Field(
        default=None, description="JSON file {split: [tangram ids]}; default: the whole set."
    )
    split: Literal["dev", "train", "test"] = "dev"
    config_seed: int | str = Field(
        default=0,
        description="Names the study's config queue. The queue is keyed by the secret key too "
        "(HMAC), so only the server's operator can replay it; a new seed starts a new queue.",
    )
    production: bool | None = Field(
        default=None,
        description="Refuse to start with an unset or example secret key or config seed. "
        "Default: on when the server listens on a non-loopback address.",
    )

    # --- game rules (docs/game.md defaults)
    rules: GameRules = GameRules()

    # --- lobby and crowd platform
    lobby_timeout_seconds: float = 300.0
    lobby_fallback: Literal["model", "release"] = "release"
    listener: Literal["human", "model"] = Field(
        default="human", description="Who fills the listener seat of new games."
    )
    max_games_per_worker: int = 3
    consent_file: Path | None = None
    require_quiz: bool = True
    prolific_completion_code: str = ""  # when set, the end screen redirects to Prolific

    # --- model listener (policy worker)
    model_system: str = "model"
    click_delay_seconds: float = 0.4  # pace of a model listener's clicks as streamed to the speaker

    role_assignment: Literal["random", "arrival"] = "random"  # "arrival": first to wait speaks
    # --- timers inside the server
    sweep_interval_seconds: float = 1.0

    def is_production(self) -> bool:
        if self.production is not None:
            return self.production
        return self.host not in ("127.0.0.1", "localhost", "::1")

    def production_problem(self) -> str | None:
        """Why a production server must not start with these settings (one line), or None."""
        if not self.is_production():
            return None
        if len(self.secret_key) < 16 or self.secret_key in WEAK_SECRETS:
            return (
                "MULTIREF_SECRET_KEY is unset or an example value: set a long random one "
                "(python -c 'import secrets; print(secrets.token_urlsafe(32))') or MULTIREF_PRODUCTION=false."
            )
        if str(self.config_seed) in ("", "0") or str(self.config_seed) in WEAK_SECRETS:
            return (
                "MULTIREF_CONFIG_SEED is the default: set a study-specific seed (any text) "
                "or MULTIREF_PRODUCTION=false."
            )
        return None

    def url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()
