"""``multiref tangrams …``: get, generate and inspect tangram sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from app.tangrams import builtin
from app.tangrams.fetch import KilogramFetchError, fetch_kilogram
from app.tangrams.store import TangramSet, TangramSetError, load_splits

tangrams_app = typer.Typer(
    help="Tangram image sets: download KiloGram, generate the built-in set, list a folder.",
    no_args_is_help=True,
)
console = Console()


@tangrams_app.command("fetch")
def fetch_command(
    directory: Annotated[Path, typer.Argument(help="Folder to download the KiloGram SVGs into.")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each request.")] = 30.0,
    ref: Annotated[str, typer.Option(help="Branch, tag or commit of lil-lab/kilogram.")] = "main",
) -> None:
    """Download the 1,013 KiloGram tangram SVGs (and their copyright notice) from GitHub.

    Running it again resumes an interrupted download. Use the folder with
    MULTIREF_TANGRAMS=DIR or --tangrams DIR.
    """
    try:
        report = fetch_kilogram(directory, progress=True, timeout=timeout, ref=ref)
    except KilogramFetchError as error:
        console.print(f"[red]KiloGram download failed:[/red] {error}", soft_wrap=True)
        raise typer.Exit(1) from error
    console.print(
        f"{report.svg_count} tangrams in {report.dest} ({report.downloaded} downloaded, "
        f"{report.skipped} already there). For research and education use: see NOTICE.txt.\n"
        f"Use them with MULTIREF_TANGRAMS={report.dest} or --tangrams {report.dest}."
    )


@tangrams_app.command("builtin")
def builtin_command(
    directory: Annotated[Path, typer.Argument(help="Folder to write the generated SVGs into.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of figures.")] = 1013,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same figures.")] = 0,
) -> None:
    """Generate the built-in tangram set (seven-tan silhouettes, no download needed)."""
    paths = builtin.write_set(directory, n, seed)
    console.print(
        f"{len(paths)} figures written to {directory} (seed {seed}), with {builtin.SPLITS_NAME} "
        "(dev/train/test in MultiRef's proportions)."
    )


@tangrams_app.command("list")
def list_command(
    directory: Annotated[Path, typer.Argument(help="Folder of tangram .svg/.png files.")],
    splits: Annotated[
        Optional[Path],
        typer.Option(help="JSON file mapping each split name to its ids: report how many each split finds."),
    ] = None,
    show: Annotated[int, typer.Option(help="How many ids to print.")] = 10,
) -> None:
    """Count the tangrams of a folder, print the first ids, and check a splits file against it."""
    try:
        tangram_set = TangramSet(directory)
        split_ids = load_splits(splits) if splits is not None else None
    except TangramSetError as error:
        console.print(f"[red]{error}[/red]", soft_wrap=True)
        raise typer.Exit(1) from error
    ids = tangram_set.ids()
    console.print(f"{len(ids)} tangrams in {directory}")
    console.print("first: " + ", ".join(ids[:show]) + (" …" if len(ids) > show else ""))
    if split_ids is not None:
        in_a_split: set[str] = set()
        for name, members in split_ids.items():
            found = [t for t in members if t in tangram_set]
            in_a_split.update(found)
            missing = len(members) - len(found)
            note = f", [yellow]{missing} missing[/yellow]" if missing else ""
            console.print(f"split {name}: {len(found)} of {len(members)} ids present{note}")
        console.print(f"in no split: {len(set(ids) - in_a_split)}")
