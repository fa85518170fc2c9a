"""Operator commands of ``multiref``: export, import, systems, round, block.

They act on the database directly (``--database-url`` or ``MULTIREF_DATABASE_URL``), like
``multiref deploy``, and every change is written to the audit log as ``cli:<user>``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

ops_app = typer.Typer(add_completion=False)
systems_app = typer.Typer(help="Listener systems: traffic shares, pauses, quotas.", no_args_is_help=True)
round_app = typer.Typer(help="Deployment rounds.", no_args_is_help=True)
ops_app.add_typer(systems_app, name="systems")
ops_app.add_typer(round_app, name="round")
console = Console()
err = Console(stderr=True)

DB_HELP = "SQLAlchemy URL (env MULTIREF_DATABASE_URL)."


def _settings(database_url: str | None):
    from app.settings import Settings

    return Settings(**({"database_url": database_url} if database_url else {}))


async def _db(database_url: str | None, migrate: bool = True):
    from app.db.database import Database

    settings = _settings(database_url)
    db = Database(settings.database_url)
    if migrate:
        await db.migrate(auto=settings.auto_migrate)
    return db, settings


def _run(coro):
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        raise typer.Exit(130)


# ---------------------------------------------------------------- export / import


@ops_app.command("export")
def export_cmd(
    out: Path = typer.Option(..., "--out", help="Folder to write interaction/turn/events files to."),
    fmt: str = typer.Option(
        "jsonl", "--format",
        help="jsonl, parquet, or hf (a datasets.load_from_disk folder with a dataset card).",
    ),
    round_: Optional[list[int]] = typer.Option(None, "--round", help="Only these rounds (repeatable)."),
    system: Optional[list[str]] = typer.Option(None, "--system", help="Only these systems (repeatable)."),
    since: Optional[str] = typer.Option(None, help="Only games created at or after (ISO date/time, UTC, or epoch seconds)."),
    until: Optional[str] = typer.Option(None, help="Only games created before this time."),
    source: Optional[list[str]] = typer.Option(None, help="live and/or imported (default both)."),
    incomplete: bool = typer.Option(False, "--incomplete", help="Include games still running (marked incomplete)."),
    release: bool = typer.Option(
        False, "--release",
        help="For public release: replace e-mails, phones, URLs, worker ids and handles in the "
        "players' text with [EMAIL], [PHONE], [URL], [ID], [HANDLE] (the database keeps the original).",
    ),
    database_url: str = typer.Option(None, help=DB_HELP),
) -> None:
    """Export games in the ReSpect release format (interaction, turn and events files).

    Reads one consistent snapshot, so it can run while games are played; memory stays flat."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from app.export import FORMATS, ExportFilter, export, parse_date

    if fmt not in (*FORMATS, "hf"):
        raise typer.BadParameter(f"choose one of {', '.join(FORMATS)}, hf", param_hint="--format")
    try:
        flt = ExportFilter(
            rounds=round_ or None,
            systems=system or None,
            since=parse_date(since) if since else None,
            until=parse_date(until) if until else None,
            sources=source or None,
            include_incomplete=incomplete,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc

    async def run():
        db, _ = await _db(database_url)
        try:
            with Progress(
                TextColumn("exporting games"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), console=err,
            ) as bar:
                task = bar.add_task("export", total=None)

                def progress(done: int, total: int | None) -> None:
                    bar.update(task, completed=done, total=total)

                if fmt == "hf":
                    from app.export_hf import export_hf

                    # a dataset folder is made to be published: always scrubbed
                    return await export_hf(db, out, flt, progress=progress, release=True)
                return await export(db, out, fmt, flt, progress=progress, release=release)
        finally:
            await db.close()

    if fmt == "hf":
        try:
            summary = _run(run())
        except ValueError as exc:
            err.print(f"[red]cannot export:[/] {exc}", soft_wrap=True)
            raise typer.Exit(2) from None
        console.print(
            f"{summary['games']} games: {summary['rows']['interaction']} interaction and "
            f"{summary['rows']['turn']} turn rows in {out} (datasets.load_from_disk; card README.md)"
        )
        return
    report = _run(run())
    table = Table("file", "rows", "bytes")
    sizes = report.sizes()
    for kind, path in report.files.items():
        table.add_row(str(path), str(report.rows[kind]), f"{sizes.get(kind, 0):,}")
    console.print(table)
    console.print(f"{report.games} games exported in {report.seconds:.1f} s")
    if report.scrubbed is not None:
        found = ", ".join(f"{n} {kind}" for kind, n in report.scrubbed.items())
        console.print(f"release: personal data replaced with placeholders: {found}")


@ops_app.command("import")
def import_cmd(
    files: list[Path] = typer.Argument(..., help="JSONL or Parquet files of interaction records."),
    policy: Optional[str] = typer.Option(None, help="Policy name for records that have none."),
    round_: Optional[int] = typer.Option(None, "--round", help="Round for records that have none."),
    database_url: str = typer.Option(None, help=DB_HELP),
) -> None:
    """Import published games (release format or the recorded-games sample) as historical games.

    Each record is replayed through the rules engine and written in its own transaction; bad
    records are listed with their file and line and skipped."""
    from app import audit
    from app.importing import import_files

    for f in files:
        if not f.is_file():
            raise typer.BadParameter(f"{f} is not a file", param_hint="FILES")

    async def run():
        db, settings = await _db(database_url)
        try:
            return await import_files(
                db, files, policy=policy, round_=round_, rules=settings.rules, actor=audit.cli_actor()
            )
        finally:
            await db.close()

    report = _run(run())
    for issue in report.bad:
        err.print(f"[red]skipped[/] {issue}", soft_wrap=True)
    console.print(
        f"{report.imported} games imported, {report.existing} already present, "
        f"{len(report.bad)} bad records skipped"
    )
    if report.bad and not report.imported:
        raise typer.Exit(1)


# ---------------------------------------------------------------- systems


def _change(database_url: str | None, fn, *args) -> None:
    from app import audit
    from app.deploy import RegistryError

    async def run():
        db, _ = await _db(database_url)
        try:
            async with db.session() as s, s.begin():
                await fn(s, *args, audit.cli_actor())
            async with db.session() as s:
                return await _systems_table(s)
        finally:
            await db.close()

    try:
        console.print(_run(run()))
    except RegistryError as exc:
        err.print(f"[red]{exc}[/]", soft_wrap=True)
        raise typer.Exit(1) from exc


async def _systems_table(s) -> Table:
    from app.deploy import current_round, list_systems

    round_ = await current_round(s)
    table = Table("system", "kind", "share", "paused", "quota", "active checkpoint",
                  title=f"round {round_ if round_ is not None else '(none started)'}")
    systems = await list_systems(s)
    for x in systems:
        table.add_row(x.name, x.kind, f"{x.share:g}", "yes" if x.paused else "", "" if x.quota is None else str(x.quota), x.checkpoint or "")
    if not any(x.share > 0 for x in systems):
        table.caption = "no system has a share: new games follow MULTIREF_LISTENER / MULTIREF_MODEL_SYSTEM"
    return table


@systems_app.command("list")
def systems_list(database_url: str = typer.Option(None, help=DB_HELP)) -> None:
    """Systems with their shares, pauses, quotas and active checkpoints."""

    async def run():
        db, _ = await _db(database_url)
        try:
            async with db.session() as s:
                return await _systems_table(s)
        finally:
            await db.close()

    console.print(_run(run()))


@systems_app.command("add")
def systems_add(
    name: str = typer.Argument(..., help="System name (the special name 'human' = human listeners)."),
    share: float = typer.Option(0.0, help="Traffic share (0: registered but gets no games)."),
    database_url: str = typer.Option(None, help=DB_HELP),
) -> None:
    """Register a system (model systems are also registered by their first deploy)."""
    from app.deploy import add_system, kind_of

    async def fn(s, name_, actor):
        await add_system(s, name_, kind_of(name_), actor, share)

    _change(database_url, fn, name)


@systems_app.command("share")
def systems_share(
    name: str = typer.Argument(...),
    share: float = typer.Argument(..., help="Relative share of arriving speakers (0 = none)."),
    database_url: str = typer.Option(None, help=DB_HELP),
) -> None:
    """Set a system's traffic share (shares are relative: 0.5/0.3/0.2 or 5/3/2 alike)."""
    from app.deploy import set_share

    async def fn(s, name_, actor):
        await set_share(s, name_, share, actor)

    _change(database_url, fn, name)


@systems_app.command("pause")
def systems_pause(name: str = typer.Argument(...), database_url: str = typer.Option(None, help=DB_HELP)) -> None:
    """Stop giving a system new games (running games go on)."""
    from app.deploy import set_paused

    async def fn(s, name_, actor):
        await set_paused(s, name_, True, actor)

    _change(database_url, fn, name)


@systems_app.command("resume")
def systems_resume(name: str = typer.Argument(...), database_url: str = typer.Option(None, help=DB_HELP)) -> None:
    """Give a paused system new games again."""
    from app.deploy import set_paused

    async def fn(s, name_, actor):
        await set_paused(s, name_, False, actor)

    _change(database_url, fn, name)


@systems_app.command("quota")
def systems_quota(
    name: str = typer.Argument(...),
    quota: Optional[int] = typer.Argument(None, help="Games per round; omit (or --none) for no quota."),
    none: bool = typer.Option(False, "--none", help="Remove the quota."),
    database_url: str = typer.Option(None, help=DB_HELP),
) -> None:
    """Stop assigning a system after N games this round (live or played to the end)."""
    from app.deploy import set_quota

    if quota is None and not none:
        raise typer.BadParameter("give a number of games, or --none")

    async def fn(s, name_, actor):
        await set_quota(s, name_, None if none else quota, actor)

    _change(database_url, fn, name)


# ---------------------------------------------------------------- rounds and blocking


@round_app.command("start")
def round_start(
    number: Optional[int] = typer.Argument(None, help="Round number (default: the next one)."),
    note: str = typer.Option("", help="A note kept with the round."),
    database_url: str = typer.Option(None, help=DB_HELP),
) -> None:
    """Start a round: games created from now on record it."""
    from app import audit
    from app.deploy import RegistryError, start_round

    async def run():
        db, _ = await _db(database_url)
        try:
            async with db.session() as s, s.begin():
                r = await start_round(s, number, audit.cli_actor(), note)
                return r.number
        finally:
            await db.close()

    try:
        console.print(f"round {_run(run())} started")
    except RegistryError as exc:
        err.print(f"[red]{exc}[/]", soft_wrap=True)
        raise typer.Exit(1) from exc


@round_app.command("list")
def round_list(database_url: str = typer.Option(None, help=DB_HELP)) -> None:
    """Rounds started so far."""
    from sqlalchemy import select

    from app.db.models import Round
    from app.export import format_date

    async def run():
        db, _ = await _db(database_url)
        try:
            async with db.session() as s:
                return list((await s.execute(select(Round).order_by(Round.number))).scalars())
        finally:
            await db.close()

    table = Table("round", "started (UTC)", "current", "note")
    for r in _run(run()):
        table.add_row(str(r.number), format_date(r.started_at), "yes" if r.current else "", r.note)
    console.print(table)


@ops_app.command("block")
def block_cmd(
    participant: Optional[str] = typer.Argument(None, help="Participant id (as shown on the dashboard)."),
    worker_hash: Optional[str] = typer.Option(None, help="Or the keyed worker hash directly."),
    reason: str = typer.Option("", help="Why (kept with the block and in the audit log)."),
    database_url: str = typer.Option(None, help=DB_HELP),
) -> None:
    """Block a crowdworker from playing again (and take them out of the lobby queue)."""
    from app import audit
    from app.db.models import Participant
    from app.live.lobby import block_worker

    if not participant and not worker_hash:
        raise typer.BadParameter("give a participant id or --worker-hash")

    async def run():
        db, settings = await _db(database_url)
        try:
            async with db.session() as s, s.begin():
                h = worker_hash
                if participant:
                    p = await s.get(Participant, participant)
                    if p is None:
                        return None
                    h = p.worker_hash
                return await block_worker(
                    s, h, reason, audit.cli_actor(), participant_id=participant, rules=settings.rules
                )
        finally:
            await db.close()

    released = _run(run())
    if released is None:
        err.print(f"[red]no participant {participant}[/]", soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"blocked; {len(released)} waiting participant(s) released")
