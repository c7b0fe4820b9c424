"""ASGI middleware: bearer-token auth and a request-body size limit, for HTTP and WebSocket.

Health probes (/healthz, /livez, /readyz) stay open so orchestrators can probe without the token;
everything else (including /metrics, /docs.json and the openpi WebSocket) needs it when a token is set.
Accepted headers: ``Authorization: Bearer <token>`` and openpi's ``Authorization: Api-Key <token>``.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Awaitable, Callable

OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz"})
_SCHEMES = (b"bearer ", b"api-key ")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


def _json(status: int, error: str, detail: str, extra_headers: list | None = None) -> tuple[dict, dict]:
    body = json.dumps({"error": error, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return (
        {"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])},
        {"type": "http.response.body", "body": body},
    )


class GuardMiddleware:
    """Refuse unauthenticated requests (401) and bodies over ``max_body_bytes`` (413), as JSON."""

    def __init__(self, app: Callable, token: str | None = None, max_body_bytes: int = 16 << 20):
        self.app, self.max_body = app, int(max_body_bytes)
        self.token = token.encode() if token else None

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                low = value.lower()
                for scheme in _SCHEMES:
                    if low.startswith(scheme):
                        return hmac.compare_digest(value[len(scheme):].strip(), self.token)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        if self.token is not None and not self._authorized(scope):
            detail = ("missing or wrong API token. Send the header 'Authorization: Bearer <token>' "
                      "(openpi clients: WebsocketClientPolicy(..., api_key=<token>)).")
            start, body = _json(401, "unauthorized", detail, [(b"www-authenticate", b"Bearer")])
            if kind == "http":
                await send(start)
                await send(body)
            elif "websocket.http.response" in scope.get("extensions", {}):
                await send({**start, "type": "websocket.http.response.start"})
                await send({**body, "type": "websocket.http.response.body"})
            else:  # no HTTP-response extension: closing before accept answers 403
                await send({"type": "websocket.close", "code": 1008})
            return
        if kind == "websocket":  # frame sizes are checked by the WebSocket handler itself
            return await self.app(scope, receive, send)

        length = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                length = int(value) if value.isdigit() else None
        if length is not None:  # the HTTP parser enforces Content-Length framing
            if length > self.max_body:
                return await self._too_large(send, length)
            return await self.app(scope, receive, send)

        # Chunked upload (no Content-Length): buffer up to the limit, then replay it to the app.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return await self._too_large(send, size)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send, size: int) -> None:
        mb = self.max_body / (1 << 20)
        start, body = _json(
            413, "payload_too_large",
            f"request body is at least {size} bytes; this server accepts at most {self.max_body} bytes ({mb:g} MiB). "
            "Send JPEG instead of raw/PNG images, smaller images, or start the server with a larger --max-body-mb.",
        )
        await send(start)
        await send(body)
