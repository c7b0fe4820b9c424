"""ASGI middleware: bearer-token auth, allowed methods, a request-body size limit and a body-read timeout.

Health probes (/healthz, /livez, /readyz) stay open so orchestrators can probe without the token;
everything else (including /metrics, /docs.json and the openpi WebSocket) needs it when a token is set.
Accepted headers: ``Authorization: Bearer <token>`` and openpi's ``Authorization: Api-Key <token>``.

The body is read here, whole, before the app sees it: over the size limit answers 413 as soon as
that is known, and a body that does not arrive within ``read_timeout_s`` answers 408, so a slow
upload cannot hold a connection and its buffers. Idle keep-alive connections are closed by the
server (``bentoml serve --timeout-keep-alive``). A multipart ``POST /predict`` goes to the upload
route (``/predict/upload``), because BentoML's typed API reads JSON.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any, Awaitable, Callable

from .metrics import count_refusal, route_of

OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz"})
TYPED_APIS = frozenset({"/predict", "/predict_batch", "/metadata"})  # BentoML reads any other type as JSON
# The methods of our routes: BentoML's router answers another method on /metadata with "Allow: POST"
# although GET /metadata is served too, so the 405 is given here, listing them all.
METHODS = {"/predict": "POST", "/predict_batch": "POST", "/predict/upload": "POST", "/act": "POST",
           "/metadata": "GET, POST"}
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

    def __init__(self, app: Callable, token: str | None = None, max_body_bytes: int = 16 << 20,
                 read_timeout_s: float = 10.0):
        self.app, self.max_body, self.read_timeout_s = app, int(max_body_bytes), read_timeout_s
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
            count_refusal(route_of(scope["path"]), 401, "unauthorized")
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
        allowed = METHODS.get(scope["path"])
        if allowed is not None and scope["method"] not in allowed.split(", "):
            return await self._send(send, 405, "method_not_allowed",
                                    f"{scope['method']} is not served on {scope['path']}; use {allowed}",
                                    scope["path"], [(b"allow", allowed.encode())])

        headers = dict(scope.get("headers", ()))
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:  # refuse before reading a byte
            return await self._too_large(send, int(length), scope["path"])
        ctype = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        if scope["path"] == "/predict" and ctype == b"multipart/form-data":
            scope = {**scope, "path": "/predict/upload", "raw_path": b"/predict/upload"}
        elif scope["method"] == "POST" and scope["path"] in TYPED_APIS and ctype != b"application/json":
            return await self._send(send, 415, "unsupported_media_type",
                                    f"Content-Type {ctype.decode(errors='replace')!r} is not accepted; send "
                                    "application/json (POST /predict also takes multipart/form-data image files)")

        chunks, size, more = [], 0, True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout_s
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                return await self._send(send, 408, "request_timeout",
                                        f"the request body did not arrive within {self.read_timeout_s:g} s; "
                                        "send it at once (or raise --read-timeout-s for slow links)", scope["path"])
            if message["type"] != "http.request":
                return  # client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return await self._too_large(send, size, scope["path"])
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _send(send: Send, status: int, error: str, detail: str, path: str = "",
                    headers: list | None = None) -> None:
        count_refusal(route_of(path), status, error)
        start, body = _json(status, error, detail, headers)
        await send(start)
        await send(body)

    async def _too_large(self, send: Send, size: int, path: str) -> None:
        mb = self.max_body / (1 << 20)
        await self._send(
            send, 413, "payload_too_large",
            f"request body is at least {size} bytes; this server accepts at most {self.max_body} bytes ({mb:g} MiB). "
            "Send JPEG instead of raw/PNG images, smaller images, or start the server with a larger --max-body-mb.",
            path,
        )
