"""The ``multiref`` command: serve, database, tangrams, bots and checks."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.logging import RichHandler

from app.tangrams.cli import tangrams_app

app = typer.Typer(
    help="MultiRef Live: a reference-game platform where a listener model learns from people.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema and consistency.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(tangrams_app, name="tangrams")
console = Console()


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=True)],
    )


def _settings(**overrides):
    from app.settings import Settings

    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)


@app.command()
def serve(
    host: str = typer.Option(None, help="Address to bind (default 127.0.0.1, env MULTIREF_HOST)."),
    port: int = typer.Option(None, help="Port (default 8000, env MULTIREF_PORT)."),
    database_url: str = typer.Option(
        None, help="SQLAlchemy URL; default a SQLite file under ./var (env MULTIREF_DATABASE_URL)."
    ),
    tangrams: Optional[Path] = typer.Option(
        None, help="Folder of tangram SVG/PNG files (env MULTIREF_TANGRAMS)."
    ),
    listener: str = typer.Option(None, help="Who fills the listener seat: human or model."),
    with_worker: bool = typer.Option(
        False, "--with-worker", help="Also run a policy worker inside this process."
    ),
    log_level: str = typer.Option("info", help="Logging level."),
) -> None:
    """Start the game server (migrates the database first)."""
    import uvicorn

    from app.web.server import create_app

    _logging(log_level)
    settings = _settings(
        host=host, port=port, database_url=database_url, tangrams=tangrams, listener=listener
    )
    application = create_app(settings)
    if with_worker:
        from policy_worker.embedded import attach_worker

        attach_worker(application, settings)
    uvicorn.run(
        application,
        host=settings.host,
        port=settings.port,
        log_level=log_level.lower(),
        ws_max_size=settings.max_frame_bytes * 2,
        timeout_graceful_shutdown=5,
    )


@db_app.command("upgrade")
def db_upgrade(
    database_url: str = typer.Option(None, help="SQLAlchemy URL (env MULTIREF_DATABASE_URL)."),
) -> None:
    """Migrate the database schema to this version of the code."""
    from app.db.database import Database

    settings = _settings(database_url=database_url)

    async def run() -> None:
        db = Database(settings.database_url)
        await db.migrate(auto=True)
        console.print(f"{db.describe()} is at revision {await db.current_revision()}")
        await db.close()

    asyncio.run(run())


@db_app.command("check")
def db_check(
    database_url: str = typer.Option(None, help="SQLAlchemy URL (env MULTIREF_DATABASE_URL)."),
    game: Optional[str] = typer.Option(None, help="Check only this game id."),
) -> None:
    """Rebuild every game from its event log and compare with the derived tables."""
    from app.db.checker import check_games
    from app.db.database import Database

    settings = _settings(database_url=database_url)

    async def run() -> int:
        db = Database(settings.database_url)
        report = await check_games(db, [game] if game else None)
        await db.close()
        for m in report.mismatches[:50]:
            console.print(f"[red]mismatch[/] {m}")
        console.print(f"checked {report.games} games, {len(report.mismatches)} mismatches")
        return 1 if report.mismatches else 0

    raise typer.Exit(asyncio.run(run()))


@app.command()
def bot(
    url: str = typer.Option("http://127.0.0.1:8000", help="Server base URL."),
    games: int = typer.Option(1, help="How many games to play (two bots per game)."),
    replay: Optional[Path] = typer.Option(
        None, help="JSONL of recorded games to replay (respect_games format)."
    ),
    admin_token: str = typer.Option(
        None, envvar="MULTIREF_ADMIN_TOKEN", help="Admin token, needed to replay recorded games."
    ),
) -> None:
    """Play games with bot players through the real protocol."""
    from app.bot import play_lobby_games, replay_file

    _logging("info")
    if replay:
        results = asyncio.run(replay_file(url, replay, admin_token, limit=games))
    else:
        results = asyncio.run(play_lobby_games(url, games))
    for r in results:
        console.print(r)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    main()
