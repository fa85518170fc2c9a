"""A TCP reverse proxy for loopback tests: what nginx does in front of the web replicas.

It forwards bytes, so HTTP and websockets pass through unchanged. Each new client connection
goes to the next backend in round-robin order; a backend that refuses the connection (killed,
restarting) is marked down and the next one is tried, so a client that reconnects after its
server died lands on a live replica. A health checker (``GET /healthz`` every
``health_interval`` seconds) marks backends up and down between connections.

The proxy runs its own event loop in a daemon thread, so synchronous and asynchronous tests can
use it alike, and it can cut connections on purpose (``drop``) to simulate network failures::

    proxy = Proxy([a.url, b.url]).start()
    BotClient(proxy.url, token, reconnect=True)
    proxy.drop(client_port=bot.local_port)   # an abrupt TCP reset, no close frame
    proxy.stop()

Only loopback addresses are accepted: all test traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class Backend:
    host: str
    port: int
    healthy: bool = True
    connections: int = 0  # connections forwarded to it so far
    failures: int = 0  # refused connects and failed health checks

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(eq=False)
class Pipe:
    """One client connection and its backend connection."""

    id: int
    client_port: int
    backend: Backend
    client_writer: asyncio.StreamWriter
    backend_writer: asyncio.StreamWriter
    opened_at: float = field(default_factory=time.time)

    def abort(self) -> None:
        for w in (self.client_writer, self.backend_writer):
            try:
                w.transport.abort()
            except Exception:
                pass


def _address(backend: str | tuple[str, int]) -> tuple[str, int]:
    if isinstance(backend, tuple):
        host, port = backend
    else:
        parts = urlsplit(backend if "://" in backend else f"http://{backend}")
        host, port = parts.hostname or "", parts.port or 80
    if host not in LOOPBACK:
        raise ValueError(f"the test proxy only forwards to loopback, not {host}")
    return host, int(port)


class Proxy:
    def __init__(
        self,
        backends: list[str | tuple[str, int]],
        *,
        port: int = 0,
        health_interval: float = 0.5,
        connect_timeout: float = 2.0,
    ) -> None:
        self.backends = [Backend(*_address(b)) for b in backends]
        self.port = port
        self.health_interval = health_interval
        self.connect_timeout = connect_timeout
        self.pipes: dict[int, Pipe] = {}
        self.refused = 0  # client connections no backend would take
        self._ids = itertools.count(1)
        self._cursor = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._health: asyncio.Task | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Proxy":
        self._thread = threading.Thread(target=self._run, name="test-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"proxy did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        except Exception:
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> "Proxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            self._health = loop.create_task(self._check_health_forever())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        if self._health:
            self._health.cancel()
        if self._server:
            self._server.close()
        for pipe in list(self.pipes.values()):
            pipe.abort()
        self.pipes.clear()

    # ------------------------------------------------------------ control (from any thread)

    def _call(self, fn, *args):
        if self._loop is None:
            raise RuntimeError("proxy is not running")

        async def run():
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def drop(self, *, client_port: int | None = None, backend: int | None = None) -> int:
        """Abort matching connections (all when no filter is given); returns how many."""

        def _drop() -> int:
            victims = [
                p
                for p in self.pipes.values()
                if (client_port is None or p.client_port == client_port)
                and (backend is None or p.backend is self.backends[backend])
            ]
            for p in victims:
                p.abort()
                self.pipes.pop(p.id, None)
            return len(victims)

        return self._call(_drop)

    def backend_of(self, client_port: int) -> int | None:
        """Index of the backend a client connection (by its local port) was sent to."""

        def _find():
            for p in self.pipes.values():
                if p.client_port == client_port:
                    return self.backends.index(p.backend)
            return None

        return self._call(_find)

    def healthy(self) -> list[bool]:
        return [b.healthy for b in self.backends]

    # ------------------------------------------------------------ forwarding

    def _order(self) -> list[Backend]:
        """Backends to try for a new connection: healthy ones from the cursor on, then the rest."""
        n = len(self.backends)
        start = self._cursor % n
        self._cursor += 1
        ring = [self.backends[(start + i) % n] for i in range(n)]
        return [b for b in ring if b.healthy] + [b for b in ring if not b.healthy]

    async def _open_backend(self) -> tuple[Backend, asyncio.StreamReader, asyncio.StreamWriter] | None:
        for b in self._order():
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(b.host, b.port), self.connect_timeout
                )
            except (OSError, TimeoutError):
                b.healthy = False
                b.failures += 1
                continue
            b.healthy = True
            b.connections += 1
            return b, reader, writer
        return None

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        opened = await self._open_backend()
        if opened is None:
            self.refused += 1
            client_writer.transport.abort()
            return
        backend, backend_reader, backend_writer = opened
        peer = client_writer.get_extra_info("peername") or ("", 0)
        pipe = Pipe(next(self._ids), peer[1], backend, client_writer, backend_writer)
        self.pipes[pipe.id] = pipe
        try:
            await asyncio.gather(
                _copy(client_reader, backend_writer), _copy(backend_reader, client_writer)
            )
        finally:
            self.pipes.pop(pipe.id, None)
            for w in (client_writer, backend_writer):
                try:
                    w.close()
                except Exception:
                    pass

    # ------------------------------------------------------------ health

    async def _check_health_forever(self) -> None:
        while True:
            await asyncio.gather(*(self._check(b) for b in self.backends))
            await asyncio.sleep(self.health_interval)

    async def _check(self, b: Backend) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(b.host, b.port), self.connect_timeout
            )
            try:
                writer.write(
                    f"GET /healthz HTTP/1.1\r\nHost: {b.host}:{b.port}\r\nConnection: close\r\n\r\n".encode()
                )
                await writer.drain()
                status = await asyncio.wait_for(reader.readline(), self.connect_timeout)
            finally:
                writer.close()
            ok = status.split(b" ")[1:2] == [b"200"]
        except (OSError, TimeoutError, IndexError):
            ok = False
        if not ok:
            b.failures += 1
        b.healthy = ok


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Forward bytes until EOF, then half-close; an abort on either side ends both."""
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, RuntimeError, asyncio.IncompleteReadError):
        writer.transport.abort()
