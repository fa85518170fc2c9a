"""The simulated study driver: stand-in base → rounds of (deploy, games, retrospect, train) →
report, resumable per stage (``study.json`` in the run folder records what is done)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sim.base import ModelSize, PretrainConfig
from sim.speakers import Descriptions, Noise

ORACLE = "ORACLE"
FROZEN = "PI0-FROZEN"
HUMAN = "human"


@dataclass
class StudyConfig:
    run_dir: Path
    annotations: Path  # KiloGram dense_annotations.json (or its folder)
    tangram_svgs: Path  # KiloGram tangrams-svg folder
    rounds: int = 4
    games: int = 24  # model games per system per round
    human_games: int = 8  # simulated human–human games in round 0 (seed task, held-out turns)
    systems: list[str] = field(default_factory=lambda: ["B-SUP", ORACLE])
    frozen: bool = False  # also deploy the base as a system that never trains
    pool: int = 12  # tangrams in play (those with crowd descriptions): each seen often
    concurrency: int = 12  # games at once (the worker batches their turns)
    seed: int = 0
    base: str | None = None  # None: build and pre-train the stand-in base
    device: str = "cpu"
    database_url: str | None = None  # None: a SQLite file in the run folder
    noise: Noise = field(default_factory=Noise)
    size: ModelSize = field(default_factory=ModelSize)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: dict[str, Any] = field(
        default_factory=lambda: {
            "epochs": 4,
            "learning_rate": 3e-3,
            "lr_scheduler": "cosine",
            "warmup_steps": 2,
            "effective_batch_size": 16,
            "micro_batch_size": 8,
            "max_heldout_turns": 16,  # model selection only: few turns, little time
            "eval_before_training": False,
            "eval_batch_size": 20,
            "lora_r": 16,
            "lora_alpha": 16,
        }
    )
    model_turn_seconds: float = 300.0
    max_turns: int = 10
    quiet: bool = False  # loop commands' output to run_dir/loop.log instead of the terminal

    def json(self) -> dict:
        d = asdict(self)
        return json.loads(json.dumps(d, default=str))


class Study:
    def __init__(self, config: StudyConfig, console: Any = None) -> None:
        from rich.console import Console

        self.c = config
        self.console = console or Console()
        self.dir = Path(config.run_dir).resolve()
        self.state_path = self.dir / "study.json"
        self.state: dict[str, Any] = {}

    # -- state

    def _load_state(self, resume: bool) -> None:
        if self.state_path.is_file():
            if not resume:
                raise FileExistsError(
                    f"{self.dir} already holds a study: pass --resume to continue it, or choose another --out"
                )
            self.state = json.loads(self.state_path.read_text())
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.state = {"config": self.c.json(), "rounds": {}, "admin_token": secrets.token_hex(16)}
            self._save()

    def _save(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2, default=str))
        tmp.replace(self.state_path)

    def _round(self, r: int) -> dict:
        return self.state["rounds"].setdefault(str(r), {})

    def _mark(self, r: int, stage: str, value: Any = True) -> None:
        self._round(r)[stage] = value
        self._save()

    # -- setup

    @property
    def systems(self) -> list[str]:
        return [*self.c.systems, *([FROZEN] if self.c.frozen else [])]

    @property
    def trained_systems(self) -> list[str]:
        return [s for s in self.c.systems]

    def _setup(self) -> tuple[Descriptions, Path]:
        everything = Descriptions.load(self.c.annotations)
        svgs = Path(self.c.tangram_svgs)
        usable = [t for t in everything.tangrams if (svgs / f"{t}.svg").is_file()]
        if len(usable) < 10:
            raise ValueError(f"only {len(usable)} described tangrams have an SVG in {svgs}: need 10")
        pool = sorted(random.Random(self.c.seed).sample(usable, min(self.c.pool, len(usable))))
        folder = self.dir / "tangrams"
        if not folder.is_dir() or sorted(p.stem for p in folder.glob("*.svg")) != pool:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            for t in pool:
                shutil.copy(svgs / f"{t}.svg", folder / f"{t}.svg")
        self.everything = Descriptions({t: everything.all[t] for t in usable})
        return Descriptions({t: everything.all[t] for t in pool}), folder

    def _base(self, descriptions: Descriptions, tangrams: Path, progress) -> str:
        if self.c.base:
            return self.c.base
        done = self.dir / "base"
        if self.state.get("base_ready") and (done / "config.json").is_file():
            return str(done)
        from learning.retrospect import FeedbackTemplate
        from policy_worker.gamedata import TangramImages
        from sim.base import build_small_idefics2, pretrain, pretraining_data, pretraining_descriptions

        every = self.everything
        corpus = every.vocabulary_lines() * 3 + [FeedbackTemplate.load(None, "binary").text] * 30
        raw = build_small_idefics2(self.dir / "base-random", corpus, self.c.size)
        seen = pretraining_descriptions(every, descriptions.tangrams, self.c.pretrain.pool_descriptions, self.c.seed)
        turns, feedback = pretraining_data(
            seen, self.c.noise, self.c.pretrain.games, self.c.seed + 1,
            context_sizes=tuple(self.c.pretrain.context_sizes),
        )
        info = pretrain(
            raw, done, turns, feedback, TangramImages(Path(self.c.tangram_svgs)).images, self.c.pretrain,
            progress, self.c.device,
        )
        info["listener_tangrams"] = {
            "outside_pool": len([t for t in seen.tangrams if t not in descriptions.all]),
            "pool": len([t for t in seen.tangrams if t in descriptions.all]),
            "descriptions_per_pool_tangram": self.c.pretrain.pool_descriptions,
        }
        shutil.rmtree(self.dir / "base-random", ignore_errors=True)
        self.state["base_ready"] = True
        self.state["pretraining"] = info
        self._save()
        return str(done)

    def _train_config(self, system: str) -> Path:
        from sim.loop import ORACLE_VERSION, train_config

        values = {**self.c.train, "device": self.c.device}
        if system == ORACLE:
            return train_config(self.dir / "configs" / f"{system}.toml", "B-SUP", values, ORACLE_VERSION)
        return train_config(self.dir / "configs" / f"{system}.toml", "", values)

    # -- the run

    def run(self, resume: bool = False) -> dict:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from sim import report
        from sim.loop import Loop, LoopError
        from sim.play import play_round

        self._load_state(resume)
        started = time.time()
        descriptions, tangrams = self._setup()
        def bars() -> Progress:
            return Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=self.console,
            )

        with bars() as progress:
            base = self._base(descriptions, tangrams, progress)
        db_url = self.c.database_url or f"sqlite+aiosqlite:///{self.dir / 'study.sqlite3'}"
        loop = Loop(db_url, tangrams, base, self.c.device, log=self.dir / "loop.log" if self.c.quiet else None)
        server = loop.server(
            self.dir,
            self.state["admin_token"],
            {
                "MULTIREF_RULES__MODEL_TURN_SECONDS": str(self.c.model_turn_seconds),
                "MULTIREF_CLICK_DELAY_SECONDS": "0",
                "MULTIREF_RULES__MAX_TURNS": str(self.c.max_turns),
                "MULTIREF_MAX_CONNECTIONS_PER_ADDRESS": "1000",
                "MULTIREF_MAX_GAMES_PER_WORKER": "1000000",
            },
        )
        worker = None
        try:
            for r in range(self.c.rounds):
                st = self._round(r)
                if not st.get("deployed"):
                    for s in self.systems:
                        adapter = None
                        if r > 0 and s in self.trained_systems:
                            trained = self.state["rounds"][str(r - 1)]["adapters"].get(s)
                            adapter = Path(trained) if trained else None  # None: keeps its checkpoint
                        if r == 0 or adapter is not None:
                            loop.deploy(s, r, adapter)
                    loop.start_round(r)
                    self._mark(r, "deployed")
                if not st.get("played"):
                    if server.proc is None:
                        server.start()
                        worker = loop.worker(self.systems, self.dir / "worker.log")
                    plan = self._plan(r)
                    with bars() as progress:
                        asyncio.run(
                            play_round(
                                server.url, self.state["admin_token"], plan, r, descriptions, self.c.noise,
                                self.c.concurrency, self.dir / "games.jsonl", self.dir / "truth.jsonl", progress,
                            )
                        )
                    self._mark(r, "played")
                if not st.get("retrospected"):
                    self.console.rule(f"round {r}: retrospect")
                    result = loop.retrospect(r, self.dir / f"retrospect-r{r}.json")
                    truth = [
                        t for t in report.read_jsonl(self.dir / "truth.jsonl")
                        if t["round"] == r and t["system"] == ORACLE
                    ]
                    if ORACLE in self.c.systems:
                        loop.store_oracle_labels(truth)
                    self._mark(r, "retrospected", {"labelled": result.get("labelled")})
                if r + 1 < self.c.rounds:
                    adapters = dict(st.get("adapters", {}))
                    positives = dict(st.get("positives", {}))
                    for s in self.trained_systems:
                        if s in adapters:
                            continue
                        self.console.rule(f"round {r}: train {s} on D≤{r}")
                        out = self.dir / "adapters" / s / f"r{r + 1}"
                        try:
                            manifest = loop.train(s, r, out, self._train_config(s), resume)
                        except LoopError as error:
                            if "no training examples" not in str(error):
                                raise
                            # as an operator would: no positive yet, the system keeps its checkpoint
                            self.console.print(f"{s}: no positive examples in D≤{r}; it keeps its checkpoint")
                            adapters[s], positives[s] = None, 0
                        else:
                            adapters[s] = str(out)
                            positives[s] = manifest["data"]["train"]["selection"]["used"]
                        self._mark(r, "adapters", adapters)
                        self._mark(r, "positives", positives)
            if worker is not None:
                worker.stop()
                worker = None
            served = loop.served_requests()
            decoded = loop.decoded_labels()
            if not self.state.get("loop_report"):
                self.console.rule("report")
                loop.report(self.dir / "loop-report")  # the operator's report, beside ours
                self.state["loop_report"] = True
                self._save()
        finally:
            if worker is not None:
                worker.stop()
            server.stop()
        positives = {
            f"{s}/{int(r) + 1}": n
            for r, st in self.state["rounds"].items()
            for s, n in st.get("positives", {}).items()
        }
        summary = report.write(
            self.dir,
            decoded,
            {
                "training_positives": positives,
                "served_requests": len(served),
                "checkpoints_used": sorted({x["checkpoint"] for x in served if x["checkpoint"]}),
                "pretraining": self.state.get("pretraining"),
                "config": self.state["config"],
                "seconds_this_run": round(time.time() - started, 1),
            },
        )
        self.console.print(report.rich_table(summary["rows"]))
        self.console.print(f"report: {self.dir / 'report'} (summary.json, report.md, learning_curves.png)")
        return summary

    def _plan(self, r: int) -> list[tuple[str, int]]:
        """(system, speaker seed) per game still to play this round: game i of every system gets
        the same speaker seed (and the server gives it the same config)."""
        from sim.report import read_jsonl

        played: dict[str, int] = {}
        for g in read_jsonl(self.dir / "games.jsonl"):
            if g["round"] == r:
                played[g["system"]] = played.get(g["system"], 0) + 1
        plan = []
        wanted = {s: self.c.games for s in self.systems}
        if r == 0 and self.c.human_games:
            wanted[HUMAN] = self.c.human_games
        for s, n in wanted.items():
            for i in range(played.get(s, 0), n):
                seed = int(hashlib.sha256(f"{self.c.seed}:{r}:{i}".encode()).hexdigest()[:8], 16)
                plan.append((s, seed))
        plan.sort(key=lambda p: (p[1], p[0]))
        return plan
