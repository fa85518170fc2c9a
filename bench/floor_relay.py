"""The floor of ``bench/ws_load.py``: the least a durable game relay on this stack must do.

    python bench/floor_relay.py            # MULTIREF_DATABASE_URL=sqlite:///path, MULTIREF_PORT

FastAPI + uvicorn (the same websockets stack and defaults as ``multiref serve``), the same HTTP
and websocket protocol as far as the load generator uses it (``POST /api/admin/games``, a hello
frame, state frames that parse as ``app.protocol.StateFrame``), and per action only: parse the
JSON, append one row to a SQLite file in WAL mode (one transaction), update a tiny in-memory
game, send one small state frame to each seat. No rules engine, no derived rows, no bus, no
validation beyond ``json.loads``. ``ws_load.py --floor`` plays the same generator against it in
the same invocation, so the server's CPU per action and p99 can be quoted as multiples of this
floor: absolute numbers drift on a shared machine, the ratio much less.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
import uuid

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

TILES = 10
MAX_TURNS = 10


class FloorGame:
    __slots__ = ("id", "tiles", "targets", "selected", "version", "phase", "turn", "messages", "socks", "rng")

    def __init__(self, game_id: str, rng: random.Random) -> None:
        self.id = game_id
        self.tiles = [f"floor-{i}" for i in range(TILES)]
        self.targets = set(rng.sample(self.tiles, rng.randint(3, 5)))
        self.selected: set[str] = set()
        self.version = 1
        self.phase = "waiting"
        self.turn = 0
        self.messages: list[dict] = []
        self.socks: dict[str, WebSocket] = {}

    def frame(self, seat: str, cause: str | None) -> str:
        show = seat == "speaker" or self.phase == "ended"
        return json.dumps({"type": "state", "view": {
            "game_id": self.id, "seat": seat, "version": self.version, "phase": self.phase,
            "turn": self.turn, "max_turns": MAX_TURNS,
            "tiles": [{"tangram_id": t, "selected": t in self.selected,
                       "target": (t in self.targets) if show else None} for t in self.tiles],
            "messages": self.messages, "server_time": time.time(), "max_utterance_chars": 500,
            "outcome": ("successful" if self.selected == self.targets else "unsuccessful") if self.phase == "ended" else None,
            "cause": cause,
        }}, separators=(",", ":"))


def create_app(db_path: str) -> FastAPI:
    app = FastAPI()
    conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, game_id TEXT, seq INTEGER, "
        "type TEXT, at REAL, data TEXT, UNIQUE (game_id, seq))"
    )
    games: dict[str, FloorGame] = {}
    rng = random.Random(1)

    def append(g: FloorGame, kind: str, data: str) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO events (game_id, seq, type, at, data) VALUES (?, ?, ?, ?, ?)",
                     (g.id, g.version, kind, time.time(), data))
        conn.execute("COMMIT")

    async def broadcast(g: FloorGame, cause: str | None) -> None:
        for seat, ws in list(g.socks.items()):
            try:
                await ws.send_text(g.frame(seat, cause))
            except Exception:
                g.socks.pop(seat, None)

    @app.get("/healthz")
    async def healthz():
        return {"ok": True}

    @app.post("/api/admin/games")
    async def create():
        g = FloorGame(uuid.uuid4().hex, rng)
        games[g.id] = g
        append(g, "game_created", "{}")
        return {"game_id": g.id, "speaker_token": g.id + ".speaker", "listener_token": g.id + ".listener"}

    @app.websocket("/ws")
    async def ws(sock: WebSocket):
        await sock.accept()
        hello = json.loads(await sock.receive_text())
        game_id, _, seat = hello.get("token", "").partition(".")
        g = games.get(game_id)
        if g is None:
            await sock.close()
            return
        g.socks[seat] = sock
        await sock.send_text(json.dumps({"type": "welcome", "participant_id": seat, "status": "in_game"}))
        if g.phase == "waiting" and len(g.socks) == 2:
            g.phase, g.turn, g.version = "speaking", 1, g.version + 1
            append(g, "joined", "{}")
            await broadcast(g, "turn_started")
        else:
            await sock.send_text(g.frame(seat, None))
        try:
            while True:
                raw = await sock.receive_text()
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind == "send_utterance" and g.phase == "speaking":
                    g.messages.append({"turn": g.turn, "text": msg["text"]})
                    g.phase, g.version, cause = "selecting", g.version + 1, "utterance_sent"
                elif kind == "click" and g.phase == "selecting":
                    g.selected ^= {msg["tangram_id"]}
                    g.version, cause = g.version + 1, "selection_toggled"
                elif kind == "submit" and g.phase == "selecting":
                    g.version += 2  # submitted + the next turn (or the end), as the real rules
                    if g.selected == g.targets or g.turn >= MAX_TURNS:
                        g.phase, cause = "ended", "game_ended"
                    else:
                        g.phase, g.turn, cause = "speaking", g.turn + 1, "turn_started"
                else:
                    continue
                append(g, cause, raw)
                await broadcast(g, cause)
        except WebSocketDisconnect:
            pass
        finally:
            if g.socks.get(seat) is sock:
                del g.socks[seat]
            if not g.socks:
                games.pop(g.id, None)

    return app


def main() -> None:
    url = os.environ["MULTIREF_DATABASE_URL"]
    path = url.split(":///", 1)[1]
    uvicorn.run(create_app(path), host=os.environ.get("MULTIREF_HOST", "127.0.0.1"),
                port=int(os.environ["MULTIREF_PORT"]), log_level="warning")


if __name__ == "__main__":
    main()
