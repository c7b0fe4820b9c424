"""One error shape for every route: ``{"error": code, "detail": text}``, 4xx for bad input, never 500.

``error_body`` maps our exceptions. ``ValidationErrorShape`` is an ASGI middleware that rewrites
BentoML's answer to a request its pydantic schema refused (400 with a *list* of pydantic errors,
which does not match the error schema BentoML itself documents) into the same shape, with the
status and code our clients already know: 422 for a bad instruction or state, 400 otherwise.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Awaitable, Callable

from vla.errors import InvalidInputError, UnknownEmbodimentError, VLAError

from .codecs import BadRequest
from .metrics import count_refusal, route_of

log = logging.getLogger("vla.serving")
# Seconds a 503 (loading, overloaded) asks clients to wait: retries at full speed slow a reload down.
RETRY_AFTER_S = 2
_FIELD_CODES = {"instruction": ("invalid_instruction", 422), "state": ("invalid_state", 422),
                "embodiment": ("invalid_embodiment", 422), "images": ("invalid_image", 400)}


def error_body(exc: BaseException) -> tuple[int, dict[str, str]]:
    """Map an exception to (HTTP status, {"error", "detail"})."""
    if isinstance(exc, BadRequest):
        return exc.status, exc.to_dict()
    if isinstance(exc, UnknownEmbodimentError):
        return 422, {"error": "unknown_embodiment", "detail": str(exc)}
    if isinstance(exc, InvalidInputError):
        return 422, {"error": exc.code, "detail": str(exc)}
    if isinstance(exc, VLAError):
        return 500, {"error": "model_error", "detail": f"{type(exc).__name__}: {exc}"}
    log.exception("unexpected server error", exc_info=exc)
    return 500, {"error": "internal_error", "detail": f"{type(exc).__name__}; see the server log"}


def pydantic_error_body(errors: list[dict[str, Any]]) -> tuple[int, dict[str, str]]:
    """pydantic's error list -> (status, body) naming each wrong field."""
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, {"error": "invalid_json", "detail": f"the request body is not valid JSON ({errors[0].get('msg')})"}
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ())]
    if loc == ["requests"] and first.get("type") in ("too_short", "too_long"):
        code, status = ("empty_batch", 400) if first["type"] == "too_short" else ("batch_too_large", 413)
    else:  # the observation field that is wrong, also inside requests[i]
        field = next((p for p in loc if p in _FIELD_CODES), "")
        code, status = _FIELD_CODES.get(field, ("invalid_request", 400))
    parts = [f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg')}" for e in errors[:5]]
    return status, {"error": code, "detail": "; ".join(parts) + ". See /docs.json for the schema."}


class SchemaRefusalLogFilter(logging.Filter):
    """BentoML logs a request its schema refused as an error with a traceback; it is the client's
    mistake, answered 4xx, so log one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        from pydantic import ValidationError

        if record.exc_info and isinstance(record.exc_info[1], ValidationError):
            record.msg, record.args = "%s refused by the schema (%d errors)", (record.args[0], record.exc_info[1].error_count())
            record.exc_info, record.levelno, record.levelname = None, logging.INFO, "INFO"
        return True


Send = Callable[[dict], Awaitable[None]]


class ValidationErrorShape:
    """Rewrite BentoML's 400 schema-validation answers on ``paths`` into our error shape."""

    def __init__(self, app: Callable, paths: frozenset[str]):
        self.app, self.paths = app, paths

    async def __call__(self, scope: dict, receive: Callable, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        start: dict | None = None
        chunks: list[bytes] = []

        async def capture(message: dict) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] == 400:
                start = message
                return
            if start is None:
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(chunks)
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and isinstance(parsed.get("detail"), list):
                status, shaped = pydantic_error_body(parsed["detail"])
                count_refusal(route_of(scope["path"]), status, shaped["error"])
                body = json.dumps(shaped).encode()
                headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
                start = {**start, "status": status, "headers": headers + [(b"content-length", str(len(body)).encode())]}
            await send(start)
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, capture)
