"""The SQLite writer's WAL stays bounded under steady writes (app.db.database): a passive
checkpoint never starts the log over while commits keep coming, so the live server's WAL grew
for as long as it ran (2.3 GB in a 15-minute soak) and its index, mapped into the server, with it."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from app.db import database
from app.db.database import Database


async def test_steady_commits_with_checkpoints_keep_the_wal_bounded(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(database, "WAL_RESTART_FRAMES", 400, raising=False)
    path = tmp_path / "wal.sqlite3"
    db = Database(f"sqlite+aiosqlite:///{path}")
    await db.migrate()
    conn = db.sqlite_writer()
    conn.execute("CREATE TABLE blobs (b BLOB)")
    wal = Path(f"{path}-wal")
    largest = shrunk = last = 0
    for _ in range(6000):  # ~3 frames a commit: 30 checkpoints, ~18,000 frames in all
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError:  # a checkpoint truncating the log holds the lock
                await asyncio.sleep(0.001)
        conn.execute("INSERT INTO blobs VALUES (randomblob(3000))")
        conn.execute("COMMIT")
        db.sqlite_committed()
        await asyncio.sleep(0)  # the checkpoints run in threads meanwhile
        size = wal.stat().st_size
        largest, shrunk, last = max(largest, size), shrunk + (size < last), size
    while db._checkpointing:
        await asyncio.sleep(0.01)
    frame = 4096 + 24
    assert conn.execute("SELECT count(*) FROM blobs").fetchone()[0] == 6000
    assert shrunk >= 3, f"the WAL was never started over ({largest / frame:.0f} frames at most)"
    assert largest < 6000 * frame, f"the WAL grew to {largest / frame:.0f} frames"
    await db.close()
