"""``multiref serve`` and ``multiref worker`` as child processes.

Tests, benchmarks and failure drills need real processes they can start, kill -9 and start again
(a server on the same loopback port): these are the launchers they share.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def terminate(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, then kill -9 if ``proc`` has not exited within ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class ServerProcess:
    """One server process: ``start()`` waits for /healthz, ``kill()`` is kill -9, ``stop()`` SIGTERM.

    ``env`` is added to this process's environment (database URL, host and port are set here);
    ``command`` replaces ``python -m app.cli serve`` (a profiling wrapper, say). The log goes to
    ``log_dir/server-PORT.log`` and is quoted when the server fails to start.
    """

    def __init__(
        self,
        database_url: str,
        log_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        command: Sequence[str] | None = None,
    ) -> None:
        self.database_url = database_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_dir) / f"server-{self.port}.log"
        self.env = {
            **os.environ,
            "MULTIREF_DATABASE_URL": database_url,
            "MULTIREF_HOST": "127.0.0.1",
            "MULTIREF_PORT": str(self.port),
            **(env or {}),
        }
        self.command = list(command or [sys.executable, "-m", "app.cli", "serve", "--log-level", "warning", *args])
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self, timeout: float = 150) -> "ServerProcess":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited (status {self.proc.returncode}):\n{self._log_tail()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not answer /healthz within {timeout:.0f} s:\n{self._log_tail()}")

    def kill(self) -> None:
        """kill -9: no shutdown hook runs."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (a graceful shutdown), then kill -9 if it has not exited within ``timeout``."""
        if self.proc:
            terminate(self.proc, timeout)

    def _log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


class WorkerProcess:
    """``multiref worker`` on the CPU in float32, started at once; ``args`` are added to its flags.

    Its log goes to ``log_path``; ``kill()`` is kill -9 (a worker dying while it holds a claim).
    """

    def __init__(
        self,
        database_url: str,
        base: Path | str,
        log_path: Path,
        *,
        tangrams: Path | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.log_path = Path(log_path)
        command = [
            sys.executable, "-m", "app.cli", "worker", "--base", str(base), "--device", "cpu",
            "--dtype", "float32", "--log-level", "info", *args,
        ]
        full_env = {
            **os.environ,
            "MULTIREF_DATABASE_URL": database_url,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            **({"MULTIREF_TANGRAMS": str(tangrams)} if tangrams else {}),
            **(env or {}),
        }
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 10) -> None:
        terminate(self.proc, timeout)
