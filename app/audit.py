"""The audit log: every operator and admin action, who did it (a token fingerprint, never the
token), what, when and with which details. Written in the same transaction as the action when
there is one, so an action and its audit entry are committed together."""

from __future__ import annotations

import getpass
import hashlib
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import AuditEntry

# Actions, as stored in ``audit_log.action``.
DEPLOY = "deploy"
SYSTEM_ADD = "system_add"
SHARE = "share"
PAUSE = "pause"
RESUME = "resume"
QUOTA = "quota"
ROUND_START = "round_start"
BLOCK = "block"
UNBLOCK = "unblock"
END_GAME = "end_game"
CREATE_GAME = "create_game"
LOGIN = "login"
IMPORT = "import"


def token_fingerprint(token: str) -> str:
    """The name under which a token appears in the audit log: 12 hex digits of its SHA-256."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def digest_fingerprint(digest_prefix: str) -> str:
    """The same name from a digest prefix (``require_admin`` returns 12 hex digits)."""
    return "token:" + digest_prefix[:12]


def cli_actor() -> str:
    """Who runs a command line: the local user name (there is no token on the command line)."""
    try:
        return "cli:" + getpass.getuser()
    except Exception:  # no user name in some containers
        return "cli"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


async def record(
    s: AsyncSession,
    actor: str,
    action: str,
    target: str | None = None,
    details: dict | None = None,
    at: float | None = None,
) -> AuditEntry:
    """Add one audit entry to the session (the caller commits it with the action)."""
    entry = AuditEntry(**entry_row(actor, action, target, details, at))
    s.add(entry)
    await s.flush()
    return entry


def entry_row(
    actor: str, action: str, target: str | None = None, details: dict | None = None, at: float | None = None
) -> dict:
    """The ``audit_log`` columns of one entry (for writers without a session: the event store)."""
    return {
        "at": time.time() if at is None else at,
        "actor": (actor or "unknown")[:64],
        "action": action[:64],
        "target": target[:200] if target else None,
        "details": _jsonable(details or {}),
    }


async def recent(s: AsyncSession, limit: int = 50) -> list[AuditEntry]:
    rows = await s.execute(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit))
    return list(rows.scalars())


def entry_json(e: AuditEntry) -> dict:
    return {
        "id": e.id,
        "at": e.at,
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "details": e.details,
    }
