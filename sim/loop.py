"""Every call the simulated study makes into the real loop, in one place.

The study drives the same commands an operator runs (``multiref round start``, ``deploy``,
``retrospect``, ``train``, ``report``) as child processes, and starts the server and the policy
worker with ``app.processes``. When the loop's commands change (a π0 seed task, re-scoring,
``evaluate``), only this module changes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from app.processes import ROOT, ServerProcess, WorkerProcess

ORACLE_VERSION = "sim-oracle-truth"  # the decoder_version under which the oracle's labels go


class LoopError(RuntimeError):
    """A loop command failed; the message quotes the end of its log."""


@dataclass
class Loop:
    """Runs loop commands against one database. ``log``: a file the commands' output is
    appended to (None: they print to this terminal, progress bars included)."""

    database_url: str
    tangrams: Path
    base: str
    device: str = "cpu"
    log: Path | None = None

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "MULTIREF_DATABASE_URL": self.database_url,
            "MULTIREF_TANGRAMS": str(self.tangrams),
            "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
            "TRANSFORMERS_OFFLINE": os.environ.get("TRANSFORMERS_OFFLINE", "1"),
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
        }

    def command(self, *args: str) -> str:
        """``multiref ARGS`` in a child process; raises LoopError if it fails."""
        cmd = [sys.executable, "-m", "app.cli", *args]
        if self.log is None:
            done = subprocess.run(cmd, cwd=ROOT, env=self.env())
            tail = ""
        else:
            with open(self.log, "ab") as f:
                f.write(f"\n$ multiref {' '.join(args)}\n".encode())
                f.flush()
                done = subprocess.run(cmd, cwd=ROOT, env=self.env(), stdout=f, stderr=subprocess.STDOUT)
            tail = self.log.read_text(errors="replace")[-2500:]
        if done.returncode != 0:
            raise LoopError(f"`multiref {' '.join(args[:3])} …` failed ({done.returncode}):\n{tail}")
        return tail

    # -- the commands of a round

    def start_round(self, number: int) -> None:
        self.command("round", "start", str(number), "--note", "simulated study")

    def deploy(self, system: str, round_: int, adapter: Path | None) -> None:
        args = ["deploy", "--system", system, "--round", str(round_), "--base", self.base]
        if adapter is not None:
            args += ["--adapter", str(adapter)]
        self.command(*args)

    def retrospect(self, round_: int, json_out: Path) -> dict:
        self.command(
            "retrospect", "--round", str(round_), "--decoder", "binary", "--base", self.base,
            "--device", self.device, "--json-out", str(json_out),
        )
        return json.loads(json_out.read_text())

    def train(self, system: str, round_: int, out: Path, config: Path, resume: bool) -> dict:
        args = [
            "train", "--system", system, "--round", str(round_), "--out", str(out),
            "--config", str(config), "--base", self.base, "--tangrams", str(self.tangrams),
            "--device", self.device,
        ]
        if resume and (out / "state").is_dir():
            args.append("--resume")
        self.command(*args)
        return json.loads((out / "manifest.json").read_text())

    def report(self, out: Path) -> None:
        self.command("report", "--out", str(out))

    # -- processes

    def server(self, log_dir: Path, admin_token: str, env: dict[str, str]) -> ServerProcess:
        return ServerProcess(
            self.database_url,
            log_dir,
            env={
                "MULTIREF_TANGRAMS": str(self.tangrams),
                "MULTIREF_ADMIN_TOKEN": admin_token,
                "PYTHONPATH": self.env()["PYTHONPATH"],
                **env,
            },
        )

    def worker(self, systems: Sequence[str], log_path: Path) -> WorkerProcess:
        args = [a for s in systems for a in ("--system", s)]
        if self.device != "cpu":  # WorkerProcess defaults to the CPU in float32
            args += ["--device", self.device, "--dtype", "bfloat16"]
        return WorkerProcess(
            self.database_url, self.base, log_path, tangrams=self.tangrams, args=args,
            env={"PYTHONPATH": self.env()["PYTHONPATH"]},
        )

    # -- the oracle control's labels

    def store_oracle_labels(self, truth: Sequence[dict]) -> int:
        """Write the TRUE labels of the oracle system's actions as its training labels (binary:
        +1 stays, anything else is −1), under their own decoder version."""
        import asyncio

        from app.db.database import Database
        from learning.retrospect import Decision, FeedbackContext, store_labels

        contexts = [
            FeedbackContext(t["game_id"], t["turn"], None, "", "", "", t["true_label"]) for t in truth
        ]
        decisions = [Decision(1 if t["true_label"] == 1 else -1, {"source": "simulation"}) for t in truth]

        async def run() -> int:
            db = Database(self.database_url)
            try:
                return await store_labels(db, "binary", ORACLE_VERSION, contexts, decisions, replace=True)
            finally:
                await db.close()

        return asyncio.run(run())

    def decoded_labels(self) -> dict[tuple[str, int], int]:
        """(game id, turn) → the feedback decoder's binary label (the oracle's excluded)."""
        import asyncio

        from sqlalchemy import select

        from app.db.database import Database
        from app.db.models import FeedbackLabel

        async def run():
            db = Database(self.database_url)
            try:
                async with db.session() as s:
                    rows = await s.execute(
                        select(FeedbackLabel.game_id, FeedbackLabel.turn, FeedbackLabel.label)
                        .where(
                            FeedbackLabel.decoder == "binary",
                            FeedbackLabel.decoder_version != ORACLE_VERSION,
                        )
                        .order_by(FeedbackLabel.created_at, FeedbackLabel.id)
                    )
                    return {(g, t): lab for g, t, lab in rows}
            finally:
                await db.close()

        return asyncio.run(run())

    def served_requests(self) -> list[dict]:
        """The listener requests the worker answered (for checks and the report)."""
        import asyncio

        from sqlalchemy import select

        from app.db.database import Database
        from app.db.models import ListenerRequest

        async def run():
            db = Database(self.database_url)
            try:
                async with db.session() as s:
                    rows = await s.execute(select(ListenerRequest))
                    return [
                        {
                            "game_id": r.game_id,
                            "turn": r.turn,
                            "status": r.status,
                            "checkpoint": r.checkpoint,
                            "worker_id": r.worker_id,
                            "action": r.action,
                        }
                        for r in rows.scalars()
                    ]
            finally:
                await db.close()

        return asyncio.run(run())


def train_config(path: Path, variant: str, values: dict, decoder_version: str | None = None) -> Path:
    """A ``multiref train --config`` TOML file for one system of the study."""
    lines = [f'variant = "{variant}"']
    if decoder_version:
        lines.append(f'decoder_version = "{decoder_version}"')
    for k, v in values.items():
        if isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, str):
            lines.append(f"{k} = {json.dumps(v)}")
        else:
            lines.append(f"{k} = {v}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
