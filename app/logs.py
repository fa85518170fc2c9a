"""One log format for every ``multiref`` process (server, uvicorn, worker, tools).

Plain one-line records (time, level, logger, message), so a log file can be grepped and nothing
wraps. The access log drops query strings (study links carry raw worker ids) and leaves out the
images and static files a page loads: one game would otherwise log a line per tangram picture.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
# paths whose successful requests are not worth an access line
QUIET_PREFIXES = ("/tangrams/", "/static/", "/favicon")
# libraries that log every HTTP request or connection at INFO
NOISY = ("httpx", "httpcore", "websockets", "multipart")


class AccessFilter(logging.Filter):
    """Uvicorn access lines: no query strings; none for static files and tangram images."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 5 and isinstance(args[2], str):
            path = args[2].split("?", 1)[0]
            status = args[4]
            if path.startswith(QUIET_PREFIXES) and isinstance(status, int) and status < 400:
                return False
            record.args = (*args[:2], path, *args[3:])
        return True


class ConnectionNoise(logging.Filter):
    """Uvicorn says "connection open"/"connection closed" after every websocket's access line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in ("connection open", "connection closed")


def configure(level: str = "info") -> None:
    """Send every logger to stderr in one format (idempotent)."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_multiref", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._multiref = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
        for old in list(root.handlers):  # another console handler would print a second format
            if type(old) is logging.StreamHandler or type(old).__name__ == "RichHandler":
                root.removeHandler(old)
        root.addHandler(handler)
    root.setLevel(level.upper())
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    error = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, ConnectionNoise) for f in error.filters):
        error.addFilter(ConnectionNoise())
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, AccessFilter) for f in access.filters):
        access.addFilter(AccessFilter())
