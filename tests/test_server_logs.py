"""The server's log as an operator reads it: one format, no line per image or static file, one
line per finished game, the built-in-tangrams warning at most once."""

from __future__ import annotations

import asyncio
import re

import httpx

from app.bot import play_lobby_games
from app.processes import ServerProcess

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) +[\w.]+: \S")
ENDED = re.compile(r"game ([0-9a-f]{32}) ended: system (\S+), (\w+) \((\w+)\), (\d+) turns$")


def test_server_log_has_one_format_and_one_line_per_finished_game(tmp_path):
    server = ServerProcess(
        f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}", tmp_path, args=["--log-level", "info"]
    ).start()
    try:
        results = asyncio.run(play_lobby_games(server.url, 2))
        page = httpx.get(server.url + "/").text
        for path in re.findall(r'(?:src|href)="(/static/[^"?]+)', page):
            assert httpx.get(server.url + path).status_code == 200
        for tid in re.findall(r'/tangrams/([\w.-]+)', page)[:5]:
            httpx.get(f"{server.url}/tangrams/{tid}")
        ids = httpx.get(server.url + "/healthz")  # an ordinary request still gets its line
        assert ids.status_code == 200
    finally:
        server.stop()
    lines = [line for line in server.log_path.read_text().splitlines() if line.strip()]
    odd = [line for line in lines if not LINE.match(line)]
    assert not odd, odd[:5]
    assert not [line for line in lines if re.search(r"\"GET /(static|tangrams)/", line)]
    assert any('"GET /healthz' in line for line in lines)
    assert not [line for line in lines if line.endswith(("connection open", "connection closed"))]
    ended = [ENDED.search(line) for line in lines if " ended: " in line]
    assert sorted(m.group(1) for m in ended if m) == sorted(r.game_id for r in results)
    for m, r in zip(sorted(ended, key=lambda m: m.group(1)), sorted(results, key=lambda r: r.game_id)):
        assert (m.group(2), m.group(3), int(m.group(5))) == ("human", r.outcome, r.turns)
    assert sum("KiloGram" in line for line in lines) <= 1


def test_the_built_in_set_warning_is_one_line_once_per_process(tmp_path, caplog):
    import logging

    from app.tangrams.store import resolve_tangram_set

    with caplog.at_level(logging.WARNING, logger="multiref.tangrams"):
        for _ in range(3):  # a server with an embedded worker resolves its set more than once
            resolve_tangram_set(None, tmp_path, allow_download=False, builtin_n=5)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "\n" not in warnings[0] and "multiref tangrams fetch DIR" in warnings[0]
