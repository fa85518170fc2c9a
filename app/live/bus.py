"""Fan-out of committed changes to every server process.

On PostgreSQL a notification is sent with ``pg_notify`` (LISTEN/NOTIFY) to every process
listening, and is delivered only once the events are committed. ``stage`` sends it inside the
writing transaction. The hub's game messages use ``stage_after_commit`` instead: ``flush``
queues them and one task sends them right after the commit, many per round trip. A transaction
that notifies holds PostgreSQL's cluster-wide notify lock through its commit, WAL flush
included, which serialised the commits of every game (measured here: about 450 commits/s
instead of 1,500, and four times the latency). Receivers do not rely on the order of
notifications: a game message that does not follow the cached version makes the hub reload the
game from the database, and a writer that finds the log ahead of its cache sends the reloaded
view to its own sockets.
On SQLite there is one process; notifications are dispatched after commit.
Messages are small dicts: ``{"k": "g", "id": game_id, "v": version, "e": [events]}`` for a game,
``{"k": "p", "id": participant_id}`` for a participant, ``{"k": "r", ...}`` for listener requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from pydantic_core import to_json
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

log = logging.getLogger("multiref.bus")

CHANNEL = "multiref"
LISTEN_NAME = "multiref-bus-listen"  # application_name of the bus's connections in pg_stat_activity
NOTIFY_NAME = "multiref-bus-notify"
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

    def in_transaction(self, message: dict) -> tuple[str, str] | None:
        """(channel, payload) of a ``pg_notify`` that an event store sends inside its own
        transaction (no session) for ``message``; None when this bus has no such thing (then
        ``flush`` delivers the message after the commit)."""
        return None

    def stage_after_commit(self, message: dict) -> dict:
        """Like ``stage``, but the notification is sent by ``flush``, after the commit, not by
        the writing transaction (the hub's game messages: see the module's docstring)."""
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


class _AfterCommit(dict):
    """A game message whose notification is sent after its transaction committed."""


def _shrink(message: dict) -> str:
    payload = to_json(message).decode()  # compact; pydantic-core's encoder is the fast one here
    if len(payload.encode()) > MAX_PAYLOAD and "e" in message:
        payload = to_json({k: v for k, v in message.items() if k != "e"}).decode()
    return payload


class PostgresBus(Bus):
    """LISTEN on a dedicated asyncpg connection, reconnecting when the database restarts."""

    def __init__(self, dsn: str, on_reconnect: Callable[[], Awaitable[None]] | None = None) -> None:
        super().__init__()
        self.dsn = dsn
        self.on_reconnect = on_reconnect
        self._task: asyncio.Task | None = None
        self._outbox: asyncio.Queue[str] = asyncio.Queue()
        self._notifier: asyncio.Task | None = None
        self._notifier_pid: int | None = None
        self.connected.clear()

    async def start(self) -> None:
        await super().start()
        self._task = asyncio.create_task(self._listen_forever(), name="bus-listen")
        self._notifier = asyncio.create_task(self._notify_forever(), name="bus-notify")
        try:
            await asyncio.wait_for(self.connected.wait(), timeout=15)
        except TimeoutError:
            log.warning("bus: not connected to PostgreSQL yet, will keep trying")

    async def stop(self) -> None:
        for _ in range(100):  # up to a second for the last notifications to go out
            if self._outbox.empty():
                break
            await asyncio.sleep(0.01)
        await _cancel(self._task)
        await _cancel(self._notifier)
        await super().stop()

    async def stage(self, session: AsyncSession, message: dict) -> dict:
        await session.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": CHANNEL, "payload": _shrink(message)},
        )
        return message

    def in_transaction(self, message: dict) -> tuple[str, str] | None:
        return CHANNEL, _shrink(message)

    def stage_after_commit(self, message: dict) -> dict:
        return _AfterCommit(message)  # sent by ``flush``, outside the writing transaction

    async def flush(self, staged: list[dict]) -> None:
        """Queue the notifications staged for after the commit (the others went with it).

        They are sent in order by one task, many per round trip, so a writer never waits for
        them (nor for the notify lock)."""
        for message in staged:
            if isinstance(message, _AfterCommit):
                self._outbox.put_nowait(_shrink(message))

    async def _notify_forever(self) -> None:
        import asyncpg

        conn = None
        try:
            while True:
                batch = [await self._outbox.get()]
                while not self._outbox.empty() and len(batch) < 1000:
                    batch.append(self._outbox.get_nowait())
                args = [(CHANNEL, payload) for payload in batch]
                for attempt in (1, 2):
                    try:
                        if conn is None or conn.is_closed():
                            conn = await asyncpg.connect(
                                self.dsn, server_settings={"application_name": NOTIFY_NAME}
                            )
                            self._notifier_pid = conn.get_server_pid()
                        await conn.executemany("SELECT pg_notify($1, $2)", args)
                        break
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # committed already: others catch up on the next change
                        if conn is not None:
                            conn.terminate()
                            conn = None
                        if attempt == 2:
                            log.warning("bus: %d notifications not sent: %s", len(batch), exc)
                            await asyncio.sleep(0.5)
        finally:
            if conn is not None:
                conn.terminate()

    def _on_notify(self, _conn, pid, _channel, payload: str) -> None:
        if pid == self._notifier_pid:
            return  # this process's own game messages: its hub broadcast them already
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
                conn = await asyncpg.connect(
                    self.dsn, server_settings={"application_name": LISTEN_NAME}
                )
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
