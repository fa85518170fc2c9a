"""Fan-out of committed changes to every server process.

On PostgreSQL a notification is sent with ``pg_notify`` inside the writing transaction, so it is
delivered only once the events are committed, in commit order, to every process listening
(LISTEN/NOTIFY). On SQLite there is one process; notifications are dispatched after commit.
Messages are small dicts: ``{"k": "g", "id": game_id, "v": version, "e": [events]}`` for a game,
``{"k": "p", "id": participant_id}`` for a participant, ``{"k": "r", ...}`` for listener requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

log = logging.getLogger("multiref.bus")

CHANNEL = "multiref"
MAX_PAYLOAD = 7000  # PostgreSQL caps a notification at 8000 bytes

Handler = Callable[[dict], Awaitable[None]]


class Bus:
    """Local dispatch (one process, SQLite); the base of the PostgreSQL bus.

    Messages are handed to subscribers from a task of their own, never from inside the
    writer's call, so a subscriber may take the locks the writer holds.
    """

    def __init__(self) -> None:
        self._handlers: list[Handler] = []
        self._queue: asyncio.Queue[dict] = asyncio.Queue()
        self._dispatcher: asyncio.Task | None = None
        self.connected = asyncio.Event()
        self.connected.set()

    def subscribe(self, handler: Handler) -> None:
        self._handlers.append(handler)

    async def start(self) -> None:
        self._dispatcher = asyncio.create_task(self._dispatch_forever(), name="bus-dispatch")

    async def stop(self) -> None:
        await _cancel(self._dispatcher)

    async def stage(self, session: AsyncSession, message: dict) -> dict:
        """Called inside the writing transaction; returns what ``flush`` needs after commit."""
        return message

    async def stage_direct(self, conn, message: dict) -> dict:
        """``stage`` for a transaction on a plain driver connection (the hub's hot path)."""
        return message

    async def flush(self, staged: list[dict]) -> None:
        """Called after commit."""
        for message in staged:
            self._queue.put_nowait(message)

    async def _dispatch_forever(self) -> None:
        while True:
            message = await self._queue.get()
            for handler in list(self._handlers):
                try:
                    await handler(message)
                except Exception:  # one bad handler must not stop the fan-out
                    log.exception("bus handler failed on %s", message.get("k"))


async def _cancel(task: asyncio.Task | None) -> None:
    if task is None:
        return
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass


def _shrink(message: dict) -> str:
    payload = json.dumps(message, separators=(",", ":"))
    if len(payload.encode()) > MAX_PAYLOAD and "e" in message:
        payload = json.dumps({k: v for k, v in message.items() if k != "e"}, separators=(",", ":"))
    return payload


class PostgresBus(Bus):
    """LISTEN on a dedicated asyncpg connection, reconnecting when the database restarts."""

    def __init__(self, dsn: str, on_reconnect: Callable[[], Awaitable[None]] | None = None) -> None:
        super().__init__()
        self.dsn = dsn
        self.on_reconnect = on_reconnect
        self._task: asyncio.Task | None = None
        self.connected.clear()

    async def start(self) -> None:
        await super().start()
        self._task = asyncio.create_task(self._listen_forever(), name="bus-listen")
        try:
            await asyncio.wait_for(self.connected.wait(), timeout=15)
        except TimeoutError:
            log.warning("bus: not connected to PostgreSQL yet, will keep trying")

    async def stop(self) -> None:
        await _cancel(self._task)
        await super().stop()

    async def stage(self, session: AsyncSession, message: dict) -> dict:
        await session.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": CHANNEL, "payload": _shrink(message)},
        )
        return message

    async def stage_direct(self, conn, message: dict) -> dict:
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, _shrink(message))
        return message

    async def flush(self, staged: list[dict]) -> None:
        return None  # delivered by PostgreSQL after commit, to this process too

    def _on_notify(self, _conn, _pid, _channel, payload: str) -> None:
        try:
            self._queue.put_nowait(json.loads(payload))
        except ValueError:
            log.warning("bus: unreadable notification dropped")

    async def _listen_forever(self) -> None:
        import asyncpg

        delay = 0.2
        first = True
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self.dsn)
                await conn.add_listener(CHANNEL, self._on_notify)
                self.connected.set()
                delay = 0.2
                if not first:
                    log.warning("bus: reconnected to PostgreSQL")
                    if self.on_reconnect:
                        await self.on_reconnect()  # catch up on what was missed while away
                first = False
                while not conn.is_closed():
                    await asyncio.sleep(0.5)
                    try:
                        await asyncio.wait_for(conn.execute("SELECT 1"), timeout=5)
                    except Exception:
                        break
            except asyncio.CancelledError:
                if conn is not None:
                    await conn.close()
                raise
            except Exception as exc:  # database down: retry with backoff
                log.warning("bus: PostgreSQL unavailable (%s); retrying in %.1fs", exc, delay)
            self.connected.clear()
            if conn is not None and not conn.is_closed():
                try:
                    await conn.close()
                except Exception:
                    pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    """The plain libpq DSN asyncpg wants, from a SQLAlchemy URL."""
    return sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)
