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
from learning.cli import learning_commands
learning_commands(app)
from sim.cli import simulate_command  # noqa: E402  (the simulated study; nothing imports sim)

app.command("simulate")(simulate_command)
from app.opscli import ops_app  # noqa: E402  (operator commands: export, import, systems, round, block)

for c in ops_app.registered_commands:
    app.registered_commands.append(c)
for g in ops_app.registered_groups:
    app.registered_groups.append(g)
console = Console()


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=True)],
    )


class _DropQueryStrings(logging.Filter):
    """Access-log lines without query strings: study links carry raw worker ids."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 3 and isinstance(record.args[2], str):
            args = list(record.args)
            args[2] = args[2].split("?", 1)[0]
            record.args = tuple(args)
        return True


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
    base: str = typer.Option(
        "HuggingFaceM4/idefics2-8b", help="With --with-worker: base model (hub id or folder)."
    ),
    device: str = typer.Option("auto", help="With --with-worker: cuda, cpu or auto."),
    log_level: str = typer.Option("info", help="Logging level."),
) -> None:
    """Start the game server (migrates the database first)."""
    import uvicorn

    from app.web.server import create_app

    _logging(log_level)
    settings = _settings(
        host=host, port=port, database_url=database_url, tangrams=tangrams, listener=listener
    )
    background = []
    if with_worker:
        from policy_worker.embedded import worker_factory

        background.append(worker_factory(_worker_options(settings, [settings.model_system], base, device)))
    application = create_app(settings, background)
    logging.getLogger("uvicorn.access").addFilter(_DropQueryStrings())
    uvicorn.run(
        application,
        host=settings.host,
        port=settings.port,
        log_level=log_level.lower(),
        ws_max_size=settings.max_frame_bytes * 2,
        timeout_graceful_shutdown=5,
    )


def _worker_options(settings, systems, base, device, **extra):
    from app.tangrams.store import resolve_tangram_set
    from app.web.server import ROOT
    from policy_worker.serve import WorkerOptions

    tangrams = resolve_tangram_set(settings.tangrams, ROOT / "var" / "tangrams")
    return WorkerOptions(systems=systems, base=base, tangrams=tangrams.folder, device=device, **extra)


@app.command()
def worker(
    system: list[str] = typer.Option(
        None, "--system", help="Model system(s) to serve (repeatable; default MULTIREF_MODEL_SYSTEM)."
    ),
    base: str = typer.Option("HuggingFaceM4/idefics2-8b", help="Base model: hub id or local folder."),
    database_url: str = typer.Option(None, help="SQLAlchemy URL (env MULTIREF_DATABASE_URL)."),
    tangrams: Optional[Path] = typer.Option(None, help="Tangram folder (env MULTIREF_TANGRAMS)."),
    device: str = typer.Option("auto", help="cuda, cuda:1, cpu or auto."),
    dtype: str = typer.Option("bfloat16", help="bfloat16, float16 or float32."),
    batch_size: int = typer.Option(16, help="Maximum turns decoded in one batch."),
    max_wait: float = typer.Option(0.02, help="Seconds to wait for a batch to fill."),
    temperature: float = typer.Option(1.0, help="Sampling temperature (0 = greedy)."),
    lease: float = typer.Option(20.0, help="Seconds a claimed turn stays this worker's."),
    log_level: str = typer.Option("info", help="Logging level."),
) -> None:
    """Run a policy worker: claim model-listener turns from the database and play them."""
    from app.db.database import Database
    from policy_worker.serve import PolicyWorker

    _logging(log_level)
    settings = _settings(database_url=database_url, tangrams=tangrams)
    options = _worker_options(
        settings, system or [settings.model_system], base, device, dtype=dtype,
        max_batch_size=batch_size, max_wait_seconds=max_wait, temperature=temperature,
        lease_seconds=lease,
    )

    async def run() -> None:
        db = Database(settings.database_url)
        await db.migrate(auto=settings.auto_migrate)
        w = PolicyWorker(db, options)
        await w.start()
        await w.preload_active()
        try:
            await asyncio.Event().wait()
        finally:
            await w.stop()
            await db.close()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


@app.command()
def deploy(
    system: str = typer.Option(..., help="System name, e.g. B-SUP."),
    round_: int = typer.Option(..., "--round", help="Deployment round."),
    adapter: Optional[Path] = typer.Option(None, help="LoRA adapter folder (a train output)."),
    base: str = typer.Option("HuggingFaceM4/idefics2-8b", help="Base model: hub id or folder."),
    database_url: str = typer.Option(None, help="SQLAlchemy URL (env MULTIREF_DATABASE_URL)."),
) -> None:
    """Register a checkpoint and make it the system's active one (new games get it)."""
    from app.db.database import Database
    from app.deploy import deploy_checkpoint

    settings = _settings(database_url=database_url)
    if adapter is not None and not adapter.is_dir():
        raise typer.BadParameter(f"{adapter} is not a folder", param_hint="--adapter")

    async def run() -> str:
        db = Database(settings.database_url)
        await db.migrate(auto=settings.auto_migrate)
        async with db.session() as s, s.begin():
            ck = await deploy_checkpoint(
                s, system, round_, base, str(adapter.resolve()) if adapter else None, deployed_by="cli"
            )
            cid = ck.id
        await db.close()
        return cid

    console.print(f"deployed {asyncio.run(run())} as the active checkpoint of {system}")


model_app = typer.Typer(help="Model utilities.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("tiny")
def model_tiny(
    out: Path = typer.Argument(..., help="Folder to write the tiny model to."),
    seed: int = typer.Option(0, help="Random seed of the weights."),
) -> None:
    """Build a tiny random-weight Idefics2 (and tokenizer) for demos and tests, offline."""
    from policy_worker.tiny import build_tiny_idefics2

    console.print(f"tiny model written to {build_tiny_idefics2(out, seed=seed)}")


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
