"""A finished player session is freed by reference counting, not left for the cyclic collector."""

from __future__ import annotations

import asyncio
import gc
import weakref
from types import SimpleNamespace

from app.web.play import PlayerSession


class FakeSocket:
    client = SimpleNamespace(host="127.0.0.1")

    async def send_text(self, text: str) -> None:
        pass


def test_a_released_session_and_its_connection_need_no_garbage_collection() -> None:
    async def run() -> tuple[weakref.ref, weakref.ref]:
        session = PlayerSession(FakeSocket(), SimpleNamespace(hub=None))
        session.error("not_in_game", "You are not in a game yet.")  # the writer task sends it
        await session.conn.close()
        session.release()
        return weakref.ref(session), weakref.ref(session.conn)

    gc.collect()
    gc.disable()
    try:
        session, conn = asyncio.run(run())
        assert session() is None and conn() is None
    finally:
        gc.enable()
