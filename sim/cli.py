"""``multiref simulate``: a whole multi-round ReSpect study on one machine, people simulated."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sim.base import PretrainConfig
from sim.speakers import Noise
from sim.study import StudyConfig

_S, _P, _N = StudyConfig, PretrainConfig, Noise()  # one place for the defaults (CLI, bench, tests)
_T = StudyConfig.__dataclass_fields__["train"].default_factory()
KILOGRAM = Path("var/kilogram")  # where `multiref tangrams fetch` puts KiloGram by default


def simulate_command(
    out: Path = typer.Option(Path("var/simulate"), help="Run folder: database, base model, adapters, logs, report/."),
    rounds: int = typer.Option(_S.rounds, help="Deployment rounds (games → retrospect → train → deploy)."),
    games: int = typer.Option(_S.games, help="Model-listener games per system per round."),
    human_games: int = typer.Option(_S.human_games, help="Simulated human–human games in round 0 (held-out turns)."),
    system: Optional[list[str]] = typer.Option(
        None, "--system", help="Learning systems (repeatable; default B-SUP and the ORACLE control)."
    ),
    frozen: bool = typer.Option(False, "--frozen", help="Also run a frozen π0 system (PI0-FROZEN)."),
    annotations: Path = typer.Option(
        KILOGRAM / "dense_annotations.json",
        envvar="MULTIREF_SIM_ANNOTATIONS",
        help="KiloGram crowd descriptions (dense_annotations.json, or KiloGram's dense.json).",
    ),
    tangrams: Path = typer.Option(
        KILOGRAM, envvar="MULTIREF_SIM_TANGRAMS", help="KiloGram tangram SVG folder."
    ),
    pool: int = typer.Option(_S.pool, help="Tangrams in play (each game shows 10 of them)."),
    base: Optional[str] = typer.Option(
        None, help="Base model (hub id or folder). Default: build and pre-train a small stand-in."
    ),
    device: str = typer.Option("cpu", help="cpu or cuda (the worker, retrospect and train)."),
    database_url: Optional[str] = typer.Option(None, help="Default: SQLite in the run folder."),
    pretrain_steps: int = typer.Option(_P.policy_steps, help="Stand-in base: pre-training steps on listener turns."),
    feedback_steps: int = typer.Option(_P.feedback_steps, help="Stand-in base: pre-training steps on decoder examples."),
    feedback_order: str = typer.Option(
        _P.order,
        help="Stand-in base: feedback-last (the decoder steps as a last phase of their own) or "
        "mixed (shuffled among the listener steps under one schedule).",
    ),
    pool_descriptions: int = typer.Option(
        _P.pool_descriptions,
        help="Stand-in base: descriptions of each pool tangram its pre-training sees (the rest of "
        "its listener turns describe tangrams outside the pool; -1: all).",
    ),
    epochs: int = typer.Option(_T["epochs"], help="Training epochs per round."),
    learning_rate: float = typer.Option(_T["learning_rate"], help="Per-round LoRA learning rate."),
    concurrency: int = typer.Option(_S.concurrency, help="Games played at once."),
    noise_silent: float = typer.Option(_N.silent, help="Speaker reactions without a feedback word."),
    noise_rephrase: float = typer.Option(_N.rephrase, help="After a miss, a new description instead of a repeat."),
    noise_ambiguous: float = typer.Option(_N.ambiguous, help="Non-committal feedback words (ok, hmm)."),
    noise_wrong: float = typer.Option(_N.wrong, help="Feedback of the opposite polarity."),
    seed: int = typer.Option(0, help="Seed of the pool, the speakers and the stand-in."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in OUT."),
    quiet: bool = typer.Option(False, help="Loop commands' output to OUT/loop.log."),
) -> None:
    """Simulate a whole study: simulated speakers (KiloGram crowd descriptions, implicit feedback
    with noise) play the real server against a small Idefics2 listener, served by the real
    worker; each round runs the real retrospect, train and deploy. The report scores success per
    round and system (95% Wilson intervals) and the feedback decoder against the true labels,
    which only the simulation knows. See bench/README.md, "Simulated study"."""
    from rich.console import Console

    from sim.study import Study

    console = Console()
    for path, what in ((annotations, "--annotations"), (tangrams, "--tangrams")):
        if not path.exists():
            console.print(f"[red]{path} not found:[/] pass {what} (KiloGram's dataset: its SVGs and its crowd annotations)", soft_wrap=True)
            raise typer.Exit(2)
    config = StudyConfig(
        run_dir=out,
        annotations=annotations,
        tangram_svgs=tangrams,
        rounds=rounds,
        games=games,
        human_games=human_games,
        systems=list(system) if system else ["B-SUP", "ORACLE"],
        frozen=frozen,
        pool=pool,
        concurrency=concurrency,
        seed=seed,
        base=base,
        device=device,
        database_url=database_url,
        noise=Noise(noise_silent, noise_rephrase, noise_ambiguous, noise_wrong),
        pretrain=PretrainConfig(
            policy_steps=pretrain_steps, feedback_steps=feedback_steps, order=feedback_order, seed=seed,
            pool_descriptions=None if pool_descriptions < 0 else pool_descriptions,
        ),
        quiet=quiet,
    )
    config.train.update({"epochs": epochs, "learning_rate": learning_rate})
    try:
        Study(config, console).run(resume=resume)
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        console.print(f"[red]cannot simulate:[/] {error}")
        raise typer.Exit(2) from None
