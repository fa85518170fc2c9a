"""Tokens: signed participant tokens for players, bearer tokens for admins and operators.

A participant token is issued at join and names one participant; the seat it acts for is the
one the database gives that participant, so a token can act only for its own seat. Admin tokens
are compared as SHA-256 digests in constant time and are only read from the Authorization
header (never from a query string, never logged).
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Header, HTTPException, Request
from itsdangerous import BadSignature, URLSafeSerializer


class ParticipantTokens:
    def __init__(self, key: str) -> None:
        self._s = URLSafeSerializer(key, salt="multiref-participant")

    def issue(self, participant_id: str) -> str:
        return self._s.dumps({"p": participant_id})

    def verify(self, token: str) -> str | None:
        try:
            data = self._s.loads(token)
        except BadSignature:
            return None
        pid = data.get("p") if isinstance(data, dict) else None
        return pid if isinstance(pid, str) else None


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, digests: list[str]) -> bool:
    candidate = token_digest(token)
    ok = False
    for d in digests:  # no early exit: the time taken does not depend on which one matched
        ok |= hmac.compare_digest(candidate, d)
    return ok


def bearer(authorization: str | None) -> str | None:
    if not authorization or not authorization.lower().startswith("bearer "):
        return None
    return authorization[7:].strip() or None


async def require_admin(request: Request, authorization: str | None = Header(default=None)) -> str:
    """FastAPI dependency: the request carries a valid admin bearer token. ``async`` although
    it never waits: FastAPI runs a plain ``def`` dependency in a worker thread, a hop that cost
    every game creation through the admin API time on a busy loop, and a stream of new threads."""
    services = request.app.state.services
    token = bearer(authorization)
    if token is None or not services.admin_digests or not token_matches(token, services.admin_digests):
        raise HTTPException(status_code=401, detail="A valid admin token is required.")
    return token_digest(token)[:12]


def participant_from_header(request: Request, authorization: str | None) -> str:
    token = bearer(authorization)
    pid = request.app.state.services.tokens.verify(token) if token else None
    if pid is None:
        raise HTTPException(status_code=401, detail="Unknown or invalid participant token.")
    return pid
