"""``multiref retrospect``, ``multiref train`` and ``multiref report`` (registered by app.cli)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console()
DEFAULT_BASE = "HuggingFaceM4/idefics2-8b"
REPO_ROOT = Path(__file__).resolve().parents[1]


def _database_url(url: str | None) -> str:
    if url:
        return url
    from app.settings import Settings

    return Settings().database_url


def _tangram_folder(folder: Path | None) -> Path:
    from app.settings import Settings
    from app.tangrams.store import resolve_tangram_set

    return resolve_tangram_set(folder or Settings().tangrams, REPO_ROOT / "var" / "tangrams").folder


def _rounds(values: list[str] | None) -> list[int] | None:
    """``--rounds 0 --rounds 1``, ``--rounds 0,1,2`` or ``--rounds 0-3``."""
    if not values:
        return None
    out: list[int] = []
    for v in values:
        for part in v.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                out.extend(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
    return sorted(set(out))


def retrospect_command(
    round_: Optional[int] = typer.Option(None, "--round", help="Label the games of this round."),
    all_games: bool = typer.Option(
        False, "--all", help="Label every ended game, whatever its round (NULL included)."
    ),
    decoder: str = typer.Option("binary", help="binary or ternary."),
    database_url: str = typer.Option(None, help="SQLAlchemy URL (env MULTIREF_DATABASE_URL)."),
    base: str = typer.Option(
        DEFAULT_BASE, help="Base model (hub id or folder); used without adapter."
    ),
    template: Optional[Path] = typer.Option(
        None,
        help="Prompt template with {dialogue} (default learning/prompts/feedback_<decoder>.txt).",
    ),
    batch_size: int = typer.Option(32, help="Actions per forward pass."),
    method: str = typer.Option(
        "generate",
        "--decoder-scoring",
        "--method",
        help="generate (paper: greedy answer, exact word match) or margin (label-word "
        "log-probabilities with a margin).",
    ),
    margin: float = typer.Option(
        0.5,
        help="margin scoring, binary: positive only if logp(positive) - logp(negative) exceeds "
        "this (nats).",
    ),
    scoring: str = typer.Option("auto", help="auto, first_token or sequence (margin scoring)."),
    max_tokens: int = typer.Option(
        256, help="Right-truncate each decoder prompt to this many tokens (0: never)."
    ),
    prefix_cache: bool = typer.Option(True, help="Encode the shared instructions once."),
    device: str = typer.Option("auto", help="cuda, cpu or auto."),
    dtype: Optional[str] = typer.Option(None, help="Default: bfloat16 on cuda, float32 on cpu."),
    overwrite: bool = typer.Option(
        False, help="Relabel actions this decoder version already labelled."
    ),
    json_out: Optional[Path] = typer.Option(
        None, help="Also write the run's summary as JSON here."
    ),
) -> None:
    """Decode implicit feedback: label each listener action from the speaker's next utterance.

    Many GPUs: run it unchanged under ``accelerate launch`` (docs/learning.md, "Many GPUs")."""
    from app.db.database import Database
    from learning.distributed import inference_runtime, main_loads_async
    from learning.retrospect import (
        DecoderConfig,
        confusion_summary,
        confusion_table,
        load_decoder,
        metrics_from_confusion,
        metrics_table,
        retrospect,
    )
    from policy_worker.model import resolve_device

    if round_ is None and not all_games:
        raise typer.BadParameter("give --round R or --all", param_hint="--round")
    try:
        config = DecoderConfig(
            decoder=decoder,
            method=method,
            margin=margin,
            batch_size=batch_size,
            prefix_cache=prefix_cache,
            scoring=scoring,
            max_tokens=max_tokens,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    rt = inference_runtime(resolve_device(device))
    say = _console(rt)
    with say.status(f"loading {base}"):
        dec = load_decoder(base, config, template, device=rt.device, dtype=dtype)

    async def run():
        db = Database(_database_url(database_url)) if rt.is_main else None  # one writer
        try:
            await main_loads_async(rt, lambda: db.migrate())
            with _progress(rt) as progress:
                return await retrospect(
                    db, dec, round_, all_games=all_games, overwrite=overwrite, progress=progress,
                    rt=rt,
                )
        finally:
            if db is not None:
                await db.close()

    result = asyncio.run(run())
    if not rt.is_main:
        return
    scope = "all games" if all_games else f"round {round_}"
    console.print(
        f"{scope}: {result.games} games, {result.actions} actions with a next utterance; "
        f"labelled {result.labelled}, already labelled {result.skipped} ({result.version})"
    )
    counts = result.label_counts
    console.print(f"labels: +1 {counts[1]}  0 {counts[0]}  -1 {counts[-1]}")
    console.print(
        confusion_table(result.confusion, f"{decoder} decoder vs heuristic (rows: heuristic)")
    )
    s = confusion_summary(result.confusion)
    if s["n"]:
        fp = s["false_positive_share"]
        console.print(
            f"agreement {100 * s['agreement']:.1f}%; "
            "decoded positives the heuristic calls negative: "
            + ("—" if fp is None else f"{100 * fp:.1f}%")
        )
    console.print(
        metrics_table(
            metrics_from_confusion(result.confusion), f"{decoder} decoder against the heuristic"
        )
    )
    console.print(
        f"throughput: {result.actions_per_s:.1f} actions/s "
        f"({result.labelled} in {result.seconds:.1f} s)" + _shares(result.per_process)
    )
    if json_out:
        json_out.write_text(json.dumps(result.json(), indent=2, default=str))


def train_command(
    system: str = typer.Option(
        ..., help="System name, e.g. B-SUP (its variant unless the config names one)."
    ),
    round_: Optional[int] = typer.Option(
        None,
        "--round",
        help="Train on D≤ρ: labelled games of rounds up to this one (with --pi0: default 0).",
    ),
    out: Path = typer.Option(..., help="Output folder: adapter, manifest.json, resumable state."),
    config: Optional[Path] = typer.Option(None, help="TOML or JSON file overriding the defaults."),
    base: str = typer.Option(DEFAULT_BASE, help="Base model (hub id or folder)."),
    database_url: str = typer.Option(None, help="SQLAlchemy URL (env MULTIREF_DATABASE_URL)."),
    tangrams: Optional[Path] = typer.Option(None, help="Tangram folder (env MULTIREF_TANGRAMS)."),
    init_adapter: Optional[Path] = typer.Option(
        None,
        help="KTO: the adapter to continue from (default: the system's newest checkpoint, "
        "round ≤ R).",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in OUT."),
    epochs: Optional[int] = typer.Option(None, help="Override the config's number of epochs."),
    device: Optional[str] = typer.Option(
        None, help="Override the config's device (cuda, cpu, auto)."
    ),
    profile: Optional[str] = typer.Option(
        None,
        help="paper (default: the reference implementation) or project (this project's "
        "alternatives); the config file may set it too. See docs/learning.md.",
    ),
    pi0: bool = typer.Option(
        False,
        "--pi0",
        help="Train the initial policy π0 from the human–human seed task alone "
        "(human-listener games of rounds ≤ --round, played or imported); deploy it at round 0.",
    ),
    stop_after_epoch: Optional[int] = typer.Option(
        None,
        help="Stop after this epoch (the state is saved); finish later with --resume, on any "
        "number of processes.",
    ),
) -> None:
    """Train a system's next adapter (SUP, RL or KTO) and write it with its manifest.

    Many GPUs: run it unchanged under ``accelerate launch`` (docs/learning.md, "Many GPUs")."""
    from learning.distributed import launched_processes
    from learning.train import load_config, train

    main = os.environ.get("RANK", "0") == "0" or launched_processes() == 1

    if round_ is None and not pi0:
        raise typer.BadParameter(
            "give --round R (or --pi0 for the initial policy)", param_hint="--round"
        )
    round_ = 0 if round_ is None else round_
    overrides = {
        k: v
        for k, v in {"epochs": epochs, "device": device, "profile": profile}.items()
        if v is not None
    }
    try:
        cfg = load_config(system, config, overrides)
        manifest = train(
            _database_url(database_url),
            system,
            round_,
            base,
            out,
            _tangram_folder(tangrams),
            cfg,
            init_adapter=init_adapter,
            resume=resume,
            console=console,
            pi0=pi0,
            stop_after_epoch=stop_after_epoch,
        )
    except ValueError as error:
        if main:
            console.print(f"[red]cannot train:[/] {error}", soft_wrap=True)
        raise typer.Exit(2) from None
    if not main:
        return
    best = manifest.get("best_exact_match")
    console.print(
        f"adapter written to {out} (epoch {manifest.get('best_epoch')} kept, held-out exact match "
        + ("—" if best is None else f"{100 * best:.1f}%")
        + "); deploy it with: "
        + f"multiref deploy --system {system} --round {0 if pi0 else round_ + 1} --adapter {out}"
    )


def report_command(
    out: Path = typer.Option(..., help="Folder for report.md, metrics.json and the PNG plots."),
    rounds: Optional[list[str]] = typer.Option(
        None, help="Rounds to include: 0,1,2 or 0-6 (default all)."
    ),
    database_url: str = typer.Option(None, help="SQLAlchemy URL (env MULTIREF_DATABASE_URL)."),
) -> None:
    """Success, turns, click accuracy, decoder confusion and language per system and round."""
    from app.db.database import Database
    from learning.report import collect, rich_table, write_report

    async def run():
        db = Database(_database_url(database_url))
        try:
            await db.migrate()
            return await collect(db, _rounds(rounds))
        finally:
            await db.close()

    results = asyncio.run(run())
    if not results:
        console.print("no ended games match")
        raise typer.Exit(1)
    written = write_report(results, out)
    console.print(rich_table(results))
    console.print(f"report: {written['report']} ({len(written['plots'])} plots)")


def rescore_command(
    rounds: Optional[list[str]] = typer.Option(
        None, "--rounds", help="Rounds whose games to score: 0,1,2 or 0-6 (default: all games)."
    ),
    system: Optional[list[str]] = typer.Option(
        None, "--system", help="Only these systems' games (repeatable)."
    ),
    checkpoint: Optional[str] = typer.Option(
        None,
        help="Score every action under this checkpoint id ('base': no adapter). Default: the "
        "checkpoint that produced each action.",
    ),
    adapter: Optional[Path] = typer.Option(
        None, help="Score every action under this adapter folder instead."
    ),
    base: str = typer.Option(DEFAULT_BASE, help="Base model (hub id or folder)."),
    database_url: str = typer.Option(None, help="SQLAlchemy URL (env MULTIREF_DATABASE_URL)."),
    tangrams: Optional[Path] = typer.Option(None, help="Tangram folder (env MULTIREF_TANGRAMS)."),
    batch_size: int = typer.Option(16, help="Actions per forward pass."),
    device: str = typer.Option("auto", help="cuda, cpu or auto."),
    dtype: Optional[str] = typer.Option(None, help="Default: bfloat16 on cuda, float32 on cpu."),
    overwrite: bool = typer.Option(False, help="Recompute actions already scored."),
    json_out: Optional[Path] = typer.Option(None, help="Also write the summary as JSON here."),
) -> None:
    """Fill π_deployed: re-score logged model-listener actions under a checkpoint (docs/learning.md).

    Imported published games arrive without it; pass --checkpoint or --adapter for them when
    their games name no checkpoint of this database. Many GPUs: run it unchanged under
    ``accelerate launch`` (docs/learning.md, "Many GPUs")."""
    from app.db.database import Database
    from learning.distributed import inference_runtime, main_loads_async
    from learning.rescore import rescore
    from policy_worker.gamedata import TangramImages
    from policy_worker.model import load_policy, resolve_device

    if checkpoint is not None and adapter is not None:
        raise typer.BadParameter("give --checkpoint or --adapter, not both", param_hint="--adapter")
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        raise typer.BadParameter(f"{adapter} holds no adapter_config.json", param_hint="--adapter")
    rt = inference_runtime(resolve_device(device))
    dev = rt.device  # launched: this process's own
    say = _console(rt)
    with say.status(f"loading {base}"):
        policy = load_policy(
            base, dtype=dtype or ("float32" if dev.type == "cpu" else "bfloat16"), device=dev
        )
    images = TangramImages(_tangram_folder(tangrams)).images

    async def run():
        db = Database(_database_url(database_url)) if rt.is_main else None  # one writer
        try:
            await main_loads_async(rt, lambda: db.migrate())
            with _progress(rt) as progress:
                return await rescore(
                    db, policy, images, _rounds(rounds), system, checkpoint,
                    adapter, overwrite, batch_size, progress, rt,
                )
        finally:
            if db is not None:
                await db.close()

    try:
        result = asyncio.run(run())
    except ValueError as error:
        say.print(f"[red]cannot rescore:[/] {error}", soft_wrap=True)
        raise typer.Exit(2) from None
    if not rt.is_main:
        return
    console.print(
        f"{result.actions} model-listener actions: scored {result.scored}, already scored "
        f"{result.skipped}, no known checkpoint {result.unknown} in {result.seconds:.1f} s"
        + _shares(result.per_process)
    )
    for ck, n in sorted(result.checkpoints.items()):
        console.print(f"  {ck}: {n}")
    if result.unknown:
        console.print(
            "actions of games that name no checkpoint were left out: pass --checkpoint ID or "
            "--adapter PATH to score them"
        )
    if json_out:
        json_out.write_text(json.dumps(result.json(), indent=2))


def evaluate_command(
    adapter: Optional[Path] = typer.Option(
        None, help="Adapter folder to evaluate (default: the base model, or --checkpoint's)."
    ),
    checkpoint: Optional[str] = typer.Option(None, help="A deployed checkpoint id instead."),
    base: str = typer.Option(DEFAULT_BASE, help="Base model (hub id or folder)."),
    split: Optional[str] = typer.Option(
        None, help="Only human–human games of this split (the games' split column)."
    ),
    source: Optional[str] = typer.Option(None, help="Only live or only imported games."),
    rounds: Optional[list[str]] = typer.Option(None, "--rounds", help="Only these rounds."),
    all_turns: bool = typer.Option(
        False, "--all-turns", help="Keep every human turn, not only good moves (the paper filters)."
    ),
    limit: Optional[int] = typer.Option(None, help="At most this many turns (a fixed sample)."),
    mode: str = typer.Option(
        "sample", help="sample (T=1, no grammar: the paper's) or greedy (grammar-constrained)."
    ),
    seed: int = typer.Option(42, help="Sampling seed (each turn gets its own from it)."),
    database_url: str = typer.Option(None, help="SQLAlchemy URL (env MULTIREF_DATABASE_URL)."),
    tangrams: Optional[Path] = typer.Option(None, help="Tangram folder (env MULTIREF_TANGRAMS)."),
    batch_size: int = typer.Option(16, help="Turns per batch."),
    device: str = typer.Option("auto", help="cuda, cpu or auto."),
    dtype: Optional[str] = typer.Option(None, help="Default: bfloat16 on cuda, float32 on cpu."),
    out: Optional[Path] = typer.Option(
        None, help="Folder for evaluation.json (metrics and every prediction) and evaluation.png."
    ),
) -> None:
    """Evaluate a checkpoint on held-out human turns: exact match, select / deselect accuracy,
    true / false positive rates and exact match by turn (the reference's offline metrics).

    Many GPUs: run it unchanged under ``accelerate launch`` (docs/learning.md, "Many GPUs")."""
    from app.db.database import Database
    from learning.distributed import inference_runtime, main_loads
    from learning.evaluate import evaluate, load_heldout_turns, plot, resolve_mode, rich_tables
    from policy_worker.gamedata import TangramImages
    from policy_worker.model import load_policy, resolve_device

    try:
        mode = resolve_mode(mode)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--mode") from None
    if source not in (None, "live", "imported"):
        raise typer.BadParameter("use live or imported", param_hint="--source")
    if checkpoint is not None and adapter is not None:
        raise typer.BadParameter("give --checkpoint or --adapter, not both", param_hint="--adapter")

    async def load():
        from app.db.models import Checkpoint

        db = Database(_database_url(database_url))
        try:
            await db.migrate()
            path = adapter
            if checkpoint is not None:
                async with db.session() as s:
                    ck = await s.get(Checkpoint, checkpoint)
                if ck is None:
                    raise ValueError(f"no checkpoint {checkpoint!r}")
                path = Path(ck.adapter) if ck.adapter else None
            examples, stats = await load_heldout_turns(
                db, split=split, source=source, rounds=_rounds(rounds),
                good_only=not all_turns, limit=limit, seed=seed,
            )
            return path, examples, stats
        finally:
            await db.close()

    rt = inference_runtime(resolve_device(device))
    say = _console(rt)
    try:  # the main process reads the database, the others get the turns from it
        path, examples, stats = main_loads(rt, lambda: asyncio.run(load()))
    except ValueError as error:
        say.print(f"[red]cannot evaluate:[/] {error}", soft_wrap=True)
        raise typer.Exit(2) from None
    if not examples:
        say.print(
            "no held-out human turns match: import or play human–human games, or widen "
            "--split / --source / --rounds"
        )
        raise typer.Exit(1)
    if path is not None and not (path / "adapter_config.json").is_file():
        raise typer.BadParameter(f"{path} holds no adapter_config.json", param_hint="--adapter")
    dev = rt.device  # launched: this process's own
    with say.status(f"loading {base}"):
        policy = load_policy(
            base,
            adapters={"evaluated": path} if path is not None else None,
            dtype=dtype or ("float32" if dev.type == "cpu" else "bfloat16"),
            device=dev,
        )
    images = TangramImages(_tangram_folder(tangrams)).images
    with _progress(rt) as progress:
        share = len(rt.split(examples))
        task = progress.add_task(f"evaluate ({mode}){rt.tag}", total=share)
        result = evaluate(
            policy, examples, images, mode, seed, batch_size,
            adapter="evaluated" if path is not None else None, heldout_stats=stats,
            on_batch=lambda n: progress.advance(task, n), rt=rt,
        )
    if not rt.is_main:  # one writer
        return
    if rt.distributed:
        console.print(f"{rt.processes} processes" + _shares(result.run["per_process"]))
    name = str(path) if path is not None else f"{base} (no adapter)"
    result.summary["adapter"] = name
    for table in rich_tables(result.summary, f"{name}: held-out human turns ({mode})"):
        console.print(table)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "evaluation.json").write_text(json.dumps(result.json(), indent=2, default=str))
        plot(result.summary, out / "evaluation.png", Path(name).name or name)
        console.print(f"written: {out / 'evaluation.json'}, {out / 'evaluation.png'}")


def _console(rt) -> Console:
    """The console of the main process; a silent one elsewhere (one process speaks)."""
    return console if rt.is_main else Console(quiet=True)


def _shares(per_process: list[int]) -> str:
    """The note of each process's share ("; shares per process: 24, 23"); empty for one."""
    if len(per_process) <= 1:
        return ""
    return "; shares per process: " + ", ".join(str(n) for n in per_process)


def _progress(rt=None):
    """A progress bar; shown by the main process only (its own share under accelerate launch)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=rt is not None and not rt.is_main,
    )


def learning_commands(app: typer.Typer) -> None:
    """Register ``retrospect``, ``train`` and ``report`` on the ``multiref`` command."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("multiref.learning").setLevel(logging.INFO)
    app.command("retrospect")(retrospect_command)
    app.command("train")(train_command)
    app.command("report")(report_command)
    register_paper_commands(app)


def register_paper_commands(app: typer.Typer) -> None:
    """``rescore`` and ``evaluate`` (docs/learning.md)."""
    app.command("rescore")(rescore_command)
    app.command("evaluate")(evaluate_command)
