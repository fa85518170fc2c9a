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
    config_seed: int = 0

    # --- game rules (MULTIREF.md §1 defaults)
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

    def url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()
