"""What an append's ``UPDATE games`` costs on SQLite: every column, or only those that change.

    PYTHONPATH=. .venv/bin/python bench/sqlite_update.py

A migrated database in WAL mode (synchronous=NORMAL, as the server's writer) with 3,000 live
games; 5,000 commits of a click's update (read the version, ``BEGIN IMMEDIATE``, update,
``COMMIT``) to random games, first setting all ten derived columns (as every append did), then
only ``version`` and ``selection``. Prints CPU per commit and WAL pages written per commit:
SQLite rewrites the index entries of every indexed column an UPDATE sets (``status``,
``next_deadline``), changed or not.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import tempfile
import time

from app.db.database import Database

GAMES, COMMITS = 3000, 5000
FULL = (
    "UPDATE games SET status = ?, phase = ?, turn = ?, version = ?, selection = ?, started_at = ?, "
    "ended_at = ?, next_deadline = ?, end_reason = ?, outcome = ? WHERE id = ? AND version = ?"
)
CHANGED = "UPDATE games SET version = ?, selection = ? WHERE id = ? AND version = ?"


def main() -> None:
    path = os.path.join(tempfile.mkdtemp(prefix="mr-update-"), "u.sqlite3")

    async def migrate() -> None:
        db = Database(f"sqlite+aiosqlite:///{path}")
        await db.migrate()
        await db.close()

    asyncio.run(migrate())
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("BEGIN")
    for i in range(GAMES):
        row = {
            "id": f"{i:032x}", "listener_kind": "human", "config": "{}", "rules": "{}", "created_at": 1e9,
            "speaker_draft": "", "status": "live", "phase": "selecting", "turn": 1, "version": 5,
            "selection": "[]", "started_at": 1e9, "next_deadline": 1e9 + i, "source": "live", "system": "human",
        }
        conn.execute(f"INSERT INTO games ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
    conn.execute("COMMIT")
    rng = random.Random(1)
    for name in ("all columns", "changed columns", "all columns", "changed columns"):
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        ids = [f"{rng.randrange(GAMES):032x}" for _ in range(COMMITS)]
        start = time.process_time()
        for game_id in ids:
            version = conn.execute("SELECT version FROM games WHERE id = ?", (game_id,)).fetchone()[0]
            conn.execute("BEGIN IMMEDIATE")
            if name == "all columns":
                conn.execute(FULL, ("live", "selecting", 1, version + 1, '["a"]', 1e9, None, 1e9 + 5, None, None,
                                    game_id, version))
            else:
                conn.execute(CHANGED, (version + 1, '["a"]', game_id, version))
            conn.execute("COMMIT")
        cpu = time.process_time() - start
        pages = os.path.getsize(path + "-wal") / COMMITS / 4096
        print(f"{name:16s} {1e6 * cpu / COMMITS:6.1f} µs CPU/commit  {pages:.2f} WAL pages/commit")


if __name__ == "__main__":
    main()
