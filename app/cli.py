"""The ``multiref`` command: serve, database, tangrams, bots and checks.

``main`` builds the click command from the typer app once and tidies its help (commands in the
order people need them, flags without a value type, plain metavars), and turns a missing model
package into one line that says what to install.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from pathlib import Path
from typing import Optional

import typer
import typer.main
from rich.console import Console

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
    from app.logs import configure

    configure(level)


def _version(value: bool) -> None:
    if value:
        from app import __version__

        console.print(f"multiref {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """MultiRef Live: a reference-game platform where a listener model learns from people.

    Start with `multiref serve`; every command has --help.
    """


# The packages of the model side (`make model`); a command that needs one of them and finds it
# missing says so in one line instead of a traceback.
MODEL_PACKAGES = {"torch", "transformers", "peft", "tokenizers", "safetensors", "accelerate"}
DATA_PACKAGES = {"pyarrow", "pandas", "datasets", "matplotlib"}
MODEL_INSTALL = (
    "install the model side with `make model` (scripts/setup.sh --model: the pinned CPU torch, "
    "then .[model,data])"
)


class MissingModelSide(Exception):
    """A model-side package is not installed."""


def _require_model_side(command: str) -> None:
    """Import torch and transformers up front, so a missing one fails before anything starts."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        name = getattr(exc, "name", None) or "torch"
        raise MissingModelSide(f"multiref {command} needs {name.split('.')[0]}: {MODEL_INSTALL}") from exc


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
        False, "--with-worker", help="Also run a policy worker inside this process (needs `make model`)."
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

    if with_worker:
        _require_model_side("serve --with-worker")
    _logging(log_level)
    settings = _settings(
        host=host, port=port, database_url=database_url, tangrams=tangrams, listener=listener
    )
    background = []
    if with_worker:
        from policy_worker.embedded import worker_factory

        background.append(worker_factory(_worker_options(settings, [settings.model_system], base, device)))
    application = create_app(settings, background)
    tune_gc(settings)
    uvicorn.run(
        application,
        log_config=None,  # uvicorn's loggers go through app.logs: one format
        host=settings.host,
        port=settings.port,
        log_level=log_level.lower(),
        ws_max_size=settings.max_frame_bytes * 2,
        timeout_graceful_shutdown=5,
    )


def tune_gc(settings) -> None:
    """Before serving: keep the cyclic collector's full (generation-2) collections short.
    Each one stops the event loop while it scans every tracked object; at 500 games
    (bench/loop_probe.py, SQLite) they ran 12-13 times a minute for 290-310 ms each (up to
    555 ms), the server's longest stalls and most of its p99 (bench/README.md, issue 14 third
    pass). What exists now (modules, classes, the app, schemas: ~150,000 objects) lives until
    exit, so ``gc.freeze`` takes it out of every later scan: 230 ms each, 277 at most.
    Raising the third threshold makes them rarer but longer and the memory higher (the sockets'
    cyclic garbage waits for them), so the default stays."""
    import gc

    _trim_after_full_collections.last = time.monotonic()
    _trim_after_full_collections.interval = settings.malloc_trim_seconds
    gc.collect()
    if settings.gc_freeze:
        gc.freeze()
    gc.set_threshold(*settings.gc_thresholds)
    if settings.malloc_trim and _trim_after_full_collections not in gc.callbacks and _malloc_trim() is not None:
        gc.callbacks.append(_trim_after_full_collections)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim`` (None elsewhere)."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None).malloc_trim
    except (OSError, AttributeError):
        return None


class _HeapTrim:
    """After a full collection (at most once every ``interval`` seconds: a trim stops the loop
    for ~10-40 ms), give the pages glibc keeps free inside its heap back to the kernel. Without
    it the server's resident memory followed the highest heap it had ever needed (live objects
    plus the sockets' cyclic garbage waiting for a full collection) and crept up while live
    objects did not (bench/mem_probe.py; bench/README.md, issue 14 fourth pass)."""

    def __init__(self) -> None:
        self.last = 0.0  # monotonic time of the last trim
        self.interval = 60.0

    def __call__(self, phase: str, info: dict) -> None:  # a gc.callbacks entry
        if phase != "stop" or info.get("generation") != 2:
            return
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        trim = _malloc_trim()
        if trim is not None:
            trim(0)


_trim_after_full_collections = _HeapTrim()


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
    decoding: str = typer.Option(
        "paper",
        help="paper (the reference: action-token vocabulary, no grammar, regex parse, fallback "
        "to the first image) or grammar (only legal actions can be sampled).",
    ),
    lease: float = typer.Option(20.0, help="Seconds a claimed turn stays this worker's."),
    log_level: str = typer.Option("info", help="Logging level."),
) -> None:
    """Run a policy worker: claim model-listener turns from the database and play them."""
    _require_model_side("worker")
    from app.db.database import Database
    from policy_worker.serve import PolicyWorker

    if decoding not in ("paper", "grammar"):
        raise typer.BadParameter("use paper or grammar", param_hint="--decoding")
    _logging(log_level)
    settings = _settings(database_url=database_url, tangrams=tangrams)
    options = _worker_options(
        settings, system or [settings.model_system], base, device, dtype=dtype,
        max_batch_size=batch_size, max_wait_seconds=max_wait, temperature=temperature,
        lease_seconds=lease, decoding=decoding,
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


model_app = typer.Typer(help="Model utilities (need `make model`).", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("tiny")
def model_tiny(
    out: Path = typer.Argument(..., metavar="DIR", help="Folder to write the tiny model to."),
    seed: int = typer.Option(0, help="Random seed of the weights."),
) -> None:
    """Build a tiny random-weight Idefics2 (and tokenizer) for demos and tests, offline."""
    _require_model_side("model tiny")
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
            console.print(f"[red]mismatch[/] {m}", soft_wrap=True)
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


# `multiref --help`: the commands in the order people need them, under headings.
COMMAND_PANELS = {
    "Play": ["serve", "bot", "tangrams"],
    "Model listener": ["worker", "deploy", "model"],
    "Data": ["export", "import"],
    "Run a study": ["systems", "round", "block", "db"],
    "Learning (after a round)": ["rescore", "retrospect", "train", "evaluate", "report"],
    "Dry run": ["simulate"],
}
_METAVARS = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "Path": "PATH", "datetime": "DATE"}


def _type_label(param) -> str:
    """TEXT, INTEGER, NUMBER, PATH: the value a parameter takes (one of them when repeatable)."""
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    args = getattr(annotation, "__args__", None)
    if getattr(annotation, "__origin__", None) is list and args:
        annotation = args[0]
    return _METAVARS.get(getattr(annotation, "__name__", ""), "VALUE")


def _tidy_params(command) -> None:
    """Flags show no value type; values show an upper-case metavar instead of a Python type."""
    for param in command.params:
        if param.param_type_name == "argument":
            name = (param.metavar or param.name).upper()
            param.metavar = name
            # a plain metavar in the usage line: NAME, [NAME] when optional, NAME... when repeated
            shown = name if param.required else f"[{name}]"
            shown += "..." if param.nargs != 1 else ""
            param._usage_display_name = lambda shown=shown: shown
            label = _type_label(param)
            param.display_type_rich = lambda ctx=None, label=label: label
        elif param.param_type_name == "option" and param.metavar is None:
            param.metavar = "" if getattr(param, "is_flag", False) else _type_label(param)
    for sub in getattr(command, "commands", {}).values():
        _tidy_params(sub)


def build_command():
    """The click command behind ``multiref``, with its help tidied (see COMMAND_PANELS)."""
    command = typer.main.get_command(app)
    order = [name for names in COMMAND_PANELS.values() for name in names]
    for panel, names in COMMAND_PANELS.items():
        for name in names:
            command.commands[name].rich_help_panel = panel
    rest = [n for n in command.commands if n not in order]
    command.commands = {n: command.commands[n] for n in order + rest}
    _tidy_params(command)
    _patch_help_option(command)
    return command


def _patch_help_option(command: click.Command) -> None:
    original = command.get_help_option

    def get_help_option(ctx):
        option = original(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = get_help_option
    for sub in getattr(command, "commands", {}).values():
        _patch_help_option(sub)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = build_command()
    try:
        command(prog_name="multiref")
    except MissingModelSide as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except ModuleNotFoundError as exc:
        root = (exc.name or "").split(".")[0]
        if root in MODEL_PACKAGES:
            message = f"this command needs {root}: {MODEL_INSTALL}"
        elif root in DATA_PACKAGES:
            message = f"this command needs {root}: install the data extras with `make model` (or pip install -e '.[data]')"
        else:
            raise
        Console(stderr=True).print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
