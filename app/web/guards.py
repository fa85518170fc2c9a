"""Request guards applied before any route: text with NUL characters and oversized bodies are refused.

PostgreSQL cannot store NUL in text, so a NUL anywhere in a query string or a request body
would otherwise surface as a server error deep inside a route.
"""

from __future__ import annotations

import json

NUL_MARKERS = (b"\x00", b"\\u0000", b"%00")


DEFAULT_MAX_BODY = 1_048_576


class RefuseNul:
    """Pure ASGI middleware: 400 for HTTP requests whose query or body contains a NUL, and 413
    for a body over ``max_body`` bytes: refused from its Content-Length, or as soon as the
    streamed chunks pass the cap, so an oversized upload is never held in memory whole."""

    def __init__(self, app, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if any(m in scope.get("query_string", b"") for m in NUL_MARKERS) or "\x00" in scope.get("path", ""):
            return await _refuse(send)
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if self.max_body and (not declared.isdigit() or int(declared) > self.max_body):
            return await _refuse(send, 413, "payload_too_large", f"Request bodies are limited to {self.max_body} bytes.")
        chunks, more, size = [], True, 0
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message]), send)
            chunk = message.get("body", b"")
            size += len(chunk)
            if self.max_body and size > self.max_body:
                return await _refuse(send, 413, "payload_too_large", f"Request bodies are limited to {self.max_body} bytes.")
            chunks.append(chunk)
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


async def _refuse(
    send, status: int = 400, code: str = "bad_request", message: str = "Text may not contain NUL characters."
) -> None:
    body = json.dumps({"code": code, "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 413:
        headers.append((b"connection", b"close"))  # the rest of the upload is not read
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
