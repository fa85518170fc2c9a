"""A policy worker inside the server process (``multiref serve --with-worker``): zero setup for
playing against a model listener on one machine. It talks to the server only through the
database, exactly like a separate worker."""

from __future__ import annotations

from policy_worker.serve import PolicyWorker, WorkerOptions


def worker_factory(options: WorkerOptions):
    """A background factory for ``app.web.server.create_app``."""

    def make(services):
        worker = PolicyWorker(services.db, options)
        notify_server = services.hub.on_listener_request

        def on_request() -> None:  # SQLite has no NOTIFY: wake the worker directly
            if notify_server:
                notify_server()
            worker.wake()

        services.hub.on_listener_request = on_request

        async def start() -> None:
            await worker.start()
            await worker.preload_active()

        return start, worker.stop

    return make
