"""Request guards applied before any route: text with NUL characters is refused.

PostgreSQL cannot store NUL in text, so a NUL anywhere in a query string or a request body
would otherwise surface as a server error deep inside a route.
"""

from __future__ import annotations

import json

NUL_MARKERS = (b"\x00", b"\\u0000", b"%00")


class RefuseNul:
    """Pure ASGI middleware: 400 for HTTP requests whose query or body contains a NUL."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if any(m in scope.get("query_string", b"") for m in NUL_MARKERS) or "\x00" in scope.get("path", ""):
            return await _refuse(send)
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message]), send)
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if any(m in body for m in NUL_MARKERS[:2]):
            return await _refuse(send)
        return await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}]), send)


def _replay(messages: list[dict]):
    queue = list(messages)

    async def receive():
        if queue:
            return queue.pop(0)
        return {"type": "http.disconnect"}

    return receive


async def _refuse(send) -> None:
    body = json.dumps({"code": "bad_request", "message": "Text may not contain NUL characters."}).encode()
    await send({"type": "http.response.start", "status": 400, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
