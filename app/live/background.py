"""A server process's periodic jobs (deadline sweeper, model-listener driver) share one loop shape."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("multiref.background")


class BackgroundLoop:
    """Runs ``step()`` again and again: ``interval`` seconds after the last run, or sooner when
    ``kick()`` is called. A failing step (the database restarting, say) is logged and tried again
    at the next run, so the loop only ends with ``stop()``."""

    name = "background"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._kicked = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def step(self) -> object:
        raise NotImplementedError

    def kick(self) -> None:
        self._kicked.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    async def _run(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s failed: %s", self.name, exc)
            self._kicked.clear()
            try:
                await asyncio.wait_for(self._kicked.wait(), self.interval)
            except TimeoutError:
                pass
