"""The routes BentoML's typed APIs cannot express, as a FastAPI app the service mounts at ``/``.

``POST /predict/upload`` (multipart: one image file part per camera; a multipart ``POST /predict``
is forwarded here by serving/guard.py), ``POST /act`` (OpenVLA json-numpy), ``GET /metadata``, and
the openpi WebSocket at ``/``. FastAPI's OpenAPI description of them is merged by BentoML into
/docs.json next to the typed APIs. Every failure answers JSON ``{"error": code, "detail": text}``
with a 4xx status for bad input; on the WebSocket the same text goes back as a text frame (which
openpi's client raises) and the connection keeps serving.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Awaitable, Callable

import numpy as np
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.websockets import WebSocketDisconnect

from vla.client import wire
from vla.client.codecs import json_numpy_default, msgpack_pack

from .codecs import BadRequest, json_loads, msgpack_unpack
from .disconnect import ClientGone, unless_disconnected
from .engine import Engine, chunk_json
from .errors import RETRY_AFTER_S, error_body
from .metrics import count_refusal
from .protocol import parse_openpi, parse_openvla, parse_predict_form
from .schemas import MAX_CAMERAS, ErrorBody

log = logging.getLogger("vla.serving")
EngineGetter = Callable[[], Engine]
_ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 413, 415, 422, 503)}


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, allow_nan=False), status_code=status, media_type="application/json",
                    headers=headers)


async def answer(route: str, engine_of: EngineGetter, handler: Callable[[Engine, list], Awaitable[Response]]) -> Response:
    """Run a handler: every exception becomes a JSON error; metrics per route, embodiment and status.

    The handler appends the embodiment the request named to the list it is given, as soon as it is
    known, so a refused request is counted under its robot too.
    """
    t0 = time.perf_counter()
    named: list = []
    engine, reason = None, None
    try:
        engine = engine_of()
        response = await handler(engine, named)
    except Exception as e:  # noqa: BLE001 - every failure becomes a JSON answer
        status, body = error_body(e)
        reason = body["error"]
        headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
        response = json_response(status, body, headers)
    if engine is not None:
        engine.observe(route, named[0] if named else None, response.status_code, time.perf_counter() - t0, reason)
    else:
        count_refusal(route, response.status_code, reason or "error")
    return response


async def _upload(request: Request, engine: Engine, named: list) -> Response:
    t0 = time.perf_counter()
    fields, files = await _read_form(request, engine)
    named.append(fields.get("embodiment"))
    req = await run_in_threadpool(engine.check, parse_predict_form(fields, files))
    result = await unless_disconnected(request.receive, engine.predict(req))
    return json_response(200, chunk_json(result, (time.perf_counter() - t0) * 1e3))


async def _read_form(request: Request, engine: Engine) -> tuple[dict[str, str], dict[str, bytes]]:
    try:
        form = await request.form(max_files=MAX_CAMERAS, max_fields=16, max_part_size=engine.settings.max_body_bytes)
    except Exception as e:  # malformed multipart, too many parts
        raise BadRequest("invalid_multipart", f"cannot parse the multipart body ({getattr(e, 'detail', e)})") from None
    fields, files = {}, {}
    for key, value in form.multi_items():
        if key in fields or key in files:
            raise BadRequest("invalid_multipart", f"form part {key!r} appears twice")
        if isinstance(value, UploadFile):
            files[key] = await value.read()
        else:
            fields[key] = value
    await form.close()
    return fields, files


async def _act(request: Request, engine: Engine, named: list) -> Response:
    payload = json_loads(await request.body(), numpy=True)
    double_encoded = isinstance(payload, dict) and set(payload) == {"encoded"}
    if double_encoded:  # OpenVLA's deploy.py accepts {"encoded": json_numpy.dumps(payload)}
        if not isinstance(payload["encoded"], str):
            raise BadRequest("invalid_request", "'encoded' must be a json-numpy string")
        payload = json_loads(payload["encoded"], numpy=True)
    if isinstance(payload, dict):
        named.append(payload.get("unnorm_key", payload.get("embodiment")))
    req, return_chunk = parse_openvla(payload, engine.embodiments, engine.embodiment_name)
    result = await unless_disconnected(request.receive, engine.predict(await run_in_threadpool(engine.check, req)))
    actions = np.asarray(result.chunk.actions, dtype=np.float64)
    action = actions if return_chunk else actions[0]
    text = json.dumps(action, default=json_numpy_default)
    if double_encoded:
        text = json.dumps(text)
    return Response(text, media_type="application/json")


def engine_metadata(engine: Engine) -> dict[str, Any]:
    meta = json.loads(json.dumps(engine.policy.metadata(), default=str))  # plain JSON types only
    meta["server"] = {
        "default_embodiment": engine.default_embodiment,
        "max_batch_size": engine.settings.max_batch_size,
        "max_image_side": engine.settings.max_image_side,
        "max_body_bytes": engine.settings.max_body_bytes,
        "max_websocket_frame_bytes": engine.settings.max_frame_bytes,
        "max_instruction_tokens": engine.settings.max_instruction_tokens,
        "protocols": ["POST /predict (json; multipart goes to /predict/upload)", "POST /predict_batch",
                      "POST /metadata", "GET /metadata", "POST /act (openvla json-numpy)", "WebSocket / (openpi msgpack)"],
    }
    return meta


async def _openpi(websocket: WebSocket, engine: Engine) -> None:
    """openpi protocol: metadata frame, then one msgpack reply per msgpack request frame."""
    await websocket.accept()
    await websocket.send_bytes(msgpack_pack(engine_metadata(engine)))
    connection = object()  # the connection's requests wait in one fair-queue line
    limit = engine.settings.max_frame_bytes
    while True:
        try:
            message = await websocket.receive()
        except WebSocketDisconnect:
            return
        if message["type"] == "websocket.disconnect":
            return
        t0 = time.perf_counter()
        embodiment, status, reason = None, 200, None
        try:
            data = message.get("bytes")
            if data is None:
                raise BadRequest("invalid_msgpack", "expected a binary msgpack frame, got a text frame")
            obs = msgpack_unpack(data, max_bytes=limit)
            if isinstance(obs, dict) and "__ctrl__" in obs:  # newer openpi clients' episode bookkeeping
                await websocket.send_bytes(msgpack_pack({"__ack__": str(obs["__ctrl__"])}))
                continue
            if isinstance(obs, dict):
                embodiment = obs.get("embodiment")
            req = parse_openpi(obs, engine.embodiments, engine.embodiment_name)
            req = await run_in_threadpool(engine.check, req)
            result = await unless_disconnected(websocket.receive, engine.predict(req, key=connection))
            c = result.chunk
            server_ms = (time.perf_counter() - t0) * 1e3
            reply = wire.chunk_openpi(
                c, {"infer_ms": float(c.timings.get("model_ms", result.batch_ms)),
                    "policy_ms": float(c.timings.get("policy_ms", result.batch_ms))},
                {"infer_ms": server_ms, "queue_ms": result.queue_ms, "batch_size": result.batch_size})
            await websocket.send_bytes(msgpack_pack(reply))
        except (WebSocketDisconnect, ClientGone):
            engine.observe("ws", embodiment, 499, time.perf_counter() - t0, "client_closed_request")
            return
        except Exception as e:  # noqa: BLE001 - report, keep the connection serving
            status, body = error_body(e)
            reason = body["error"]
            try:
                await websocket.send_text(f"VLA server error {status} {body['error']}: {body['detail']}")
            except Exception:  # noqa: BLE001 - the client is gone
                return
        engine.observe("ws", embodiment, status, time.perf_counter() - t0, reason)


_UPLOAD_BODY = {"content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["instruction"],
    "properties": {"instruction": {"type": "string"}, "embodiment": {"type": "string"},
                   "state": {"type": "string", "description": "a JSON list of numbers"},
                   "observation.images.front": {"type": "string", "format": "binary",
                                                "description": "one PNG/JPEG file part per camera, named after it"}},
}}}}
_ACT_BODY = {"content": {"application/json": {
    "schema": {"type": "object", "required": ["image", "instruction"], "properties": {
        "image": {"type": ["object", "string"], "description": "json-numpy uint8 (H, W, 3): {'__numpy__': base64, "
                  "'dtype': '|u1', 'shape': [H, W, 3]}, or a base64 PNG/JPEG string"},
        "instruction": {"type": "string"}, "unnorm_key": {"type": "string", "description": "the embodiment"},
        "embodiment": {"type": "string", "description": "the same as unnorm_key"},
        "proprio": {"type": ["object", "array", "null"], "description": "the same as state"},
        "state": {"type": ["object", "array", "null"], "description": "a list of numbers or a json-numpy float array"},
        "return_chunk": {"type": "boolean", "description": "answer the whole chunk (H, D) instead of its first action"},
        "encoded": {"type": "string", "description": "alternatively, the whole payload as one json-numpy string"}}},
    "example": {"image": {"__numpy__": "AAAAAAAAAAAAAAAA", "dtype": "|u1", "shape": [2, 2, 3]},
                "instruction": "pick up the red cube", "unnorm_key": "so101"},
}}}


def build_app(engine_of: EngineGetter) -> FastAPI:
    """The FastAPI app; ``engine_of`` returns this worker's Engine (or raises 503 while it loads)."""
    app = FastAPI(title="vla", openapi_url=None, docs_url=None, redoc_url=None)

    @app.post("/predict/upload", responses=_ERRORS, openapi_extra={"requestBody": _UPLOAD_BODY},
              summary="Predict from image files (multipart)",
              description="The same answer as POST /predict, from one image file part per camera. "
                          "A multipart POST /predict is answered here too.")
    async def upload(request: Request) -> Response:
        return await answer("predict", engine_of, lambda engine, named: _upload(request, engine, named))

    @app.post("/act", responses=_ERRORS, openapi_extra={"requestBody": _ACT_BODY},
              summary="OpenVLA-compatible action (json-numpy)",
              description="What OpenVLA's deploy.py serves: the first action of the chunk as a json-numpy array "
                          "(the whole chunk with return_chunk: true).")
    async def act(request: Request) -> Response:
        return await answer("act", engine_of, lambda engine, named: _act(request, engine, named))

    @app.get("/metadata", include_in_schema=False)  # documented as POST /metadata (one path, one entry)
    async def metadata() -> Response:
        async def handler(engine: Engine, named: list) -> Response:
            return json_response(200, engine_metadata(engine))
        return await answer("metadata", engine_of, handler)

    @app.websocket("/")
    async def ws_endpoint(websocket: WebSocket) -> None:
        try:
            engine = engine_of()
        except BadRequest as e:  # still loading: say so, then close with "try again later"
            count_refusal("ws", e.status, e.code)
            await websocket.accept()
            await websocket.send_text(f"VLA server error {e.status} {e.code}: {e.detail}")
            await websocket.close(code=1013)
            return
        await _openpi(websocket, engine)

    return app
