"""The public HTTP and WebSocket routes, as a Starlette app that the BentoML service mounts at ``/``.

``POST /predict`` (JSON or multipart), ``POST /predict_batch``, ``POST /act`` (OpenVLA),
``GET /metadata``, and the openpi WebSocket at ``/``. Every failure answers JSON
``{"error": code, "detail": what was wrong and what is accepted}`` with a 4xx status for bad
input; on the WebSocket the same text goes back as a text frame (which openpi's client raises)
and the connection keeps serving.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Awaitable, Callable

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from .codecs import BadRequest, json_loads, json_numpy_default, msgpack_pack, msgpack_unpack
from .engine import MAX_BATCH_REQUESTS, Engine, chunk_json, error_body, gather_predictions
from .protocol import parse_openpi, parse_openvla, parse_predict_form, parse_predict_json

log = logging.getLogger("vla.serving")
EngineGetter = Callable[[], Engine]


def _json_response(status: int, body: Any) -> Response:
    return Response(json.dumps(body, allow_nan=False), status_code=status, media_type="application/json")


def _timed(route: str, engine_of: EngineGetter, handler: Callable[[Request, Engine], Awaitable[tuple[Response, str | None]]]):
    """Wrap a handler: map every exception to a JSON error, record metrics per embodiment."""

    async def endpoint(request: Request) -> Response:
        t0 = time.perf_counter()
        engine = engine_of()
        embodiment = None
        try:
            response, embodiment = await handler(request, engine)
        except Exception as e:  # noqa: BLE001 - every failure becomes a JSON answer
            status, body = error_body(e)
            response = _json_response(status, body)
        engine.observe(route, embodiment, response.status_code, time.perf_counter() - t0)
        return response

    return endpoint


async def _body(request: Request) -> bytes:
    return await request.body()


async def _predict(request: Request, engine: Engine) -> tuple[Response, str | None]:
    t0 = time.perf_counter()
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    side = engine.settings.max_image_side
    if ctype == "application/json":
        body = json_loads(await _body(request))
        req = await run_in_threadpool(parse_predict_json, body, side)
    elif ctype == "multipart/form-data":
        fields, files = await _read_form(request, engine)
        req = await run_in_threadpool(parse_predict_form, fields, files, side)
    else:
        raise BadRequest("unsupported_media_type", f"Content-Type {ctype!r} is not accepted; send application/json "
                         "(base64 or raw-array images) or multipart/form-data (image files)", status=415)
    req = engine.check(req)
    result = await engine.predict(req)
    return _json_response(200, chunk_json(result, (time.perf_counter() - t0) * 1e3)), req.embodiment


async def _read_form(request: Request, engine: Engine) -> tuple[dict[str, str], dict[str, bytes]]:
    try:
        form = await request.form(max_files=16, max_fields=16, max_part_size=engine.settings.max_body_bytes)
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


async def _predict_batch(request: Request, engine: Engine) -> tuple[Response, str | None]:
    t0 = time.perf_counter()
    body = json_loads(await _body(request))
    if not isinstance(body, dict) or set(body) != {"requests"} or not isinstance(body["requests"], list):
        raise BadRequest("invalid_request", 'expected {"requests": [observation, ...]}, each observation as for /predict')
    items = body["requests"]
    if not items:
        raise BadRequest("empty_batch", "'requests' is empty; send at least one observation")
    if len(items) > MAX_BATCH_REQUESTS:
        raise BadRequest("batch_too_large", f"{len(items)} observations; at most {MAX_BATCH_REQUESTS} per call", status=413)
    reqs = []
    for i, item in enumerate(items):
        try:
            reqs.append(engine.check(await run_in_threadpool(parse_predict_json, item, engine.settings.max_image_side)))
        except BadRequest as e:
            raise BadRequest(e.code, f"requests[{i}]: {e.detail}", e.status) from None
    results = await gather_predictions(engine, reqs)
    ms = (time.perf_counter() - t0) * 1e3
    embodiment = reqs[0].embodiment if len({r.embodiment for r in reqs}) == 1 else None
    return _json_response(200, {"results": [chunk_json(r, ms) for r in results]}), embodiment


async def _act(request: Request, engine: Engine) -> tuple[Response, str | None]:
    payload = json_loads(await _body(request), numpy=True)
    double_encoded = isinstance(payload, dict) and set(payload) == {"encoded"}
    if double_encoded:  # OpenVLA's deploy.py accepts {"encoded": json_numpy.dumps(payload)}
        if not isinstance(payload["encoded"], str):
            raise BadRequest("invalid_request", "'encoded' must be a json-numpy string")
        payload = json_loads(payload["encoded"], numpy=True)
    req, return_chunk = await run_in_threadpool(
        parse_openvla, payload, engine.embodiments, engine.embodiment_name, engine.settings.max_image_side
    )
    req = engine.check(req)
    result = await engine.predict(req)
    actions = np.asarray(result.chunk.actions, dtype=np.float64)
    action = actions if return_chunk else actions[0]
    text = json.dumps(action, default=json_numpy_default)
    if double_encoded:
        text = json.dumps(text)
    return Response(text, media_type="application/json"), req.embodiment


async def _metadata(request: Request, engine: Engine) -> tuple[Response, str | None]:
    return _json_response(200, engine_metadata(engine)), None


def engine_metadata(engine: Engine) -> dict[str, Any]:
    meta = json.loads(json.dumps(engine.policy.metadata(), default=str))  # plain JSON types only
    meta["server"] = {
        "default_embodiment": engine.default_embodiment,
        "max_batch_size": engine.settings.max_batch_size,
        "max_image_side": engine.settings.max_image_side,
        "max_body_bytes": engine.settings.max_body_bytes,
        "protocols": ["POST /predict (json, multipart)", "POST /predict_batch", "POST /act (openvla json-numpy)",
                      "GET /metadata", "WebSocket / (openpi msgpack)"],
    }
    return meta


async def _openpi(websocket: WebSocket, engine: Engine) -> None:
    """openpi protocol: metadata frame, then one msgpack reply per msgpack request frame."""
    await websocket.accept()
    await websocket.send_bytes(msgpack_pack(engine_metadata(engine)))
    limit = engine.settings.max_body_bytes
    while True:
        try:
            message = await websocket.receive()
        except WebSocketDisconnect:
            return
        if message["type"] == "websocket.disconnect":
            return
        t0 = time.perf_counter()
        embodiment, status = None, 200
        try:
            data = message.get("bytes")
            if data is None:
                raise BadRequest("invalid_msgpack", "expected a binary msgpack frame, got a text frame")
            obs = msgpack_unpack(data, max_bytes=limit)
            if isinstance(obs, dict) and "__ctrl__" in obs:  # newer openpi clients' episode bookkeeping
                await websocket.send_bytes(msgpack_pack({"__ack__": str(obs["__ctrl__"])}))
                continue
            req = await run_in_threadpool(parse_openpi, obs, engine.embodiments, engine.embodiment_name,
                                          engine.settings.max_image_side)
            req = engine.check(req)
            embodiment = req.embodiment
            result = await engine.predict(req)
            c = result.chunk
            server_ms = (time.perf_counter() - t0) * 1e3
            reply = {
                "actions": np.asarray(c.actions, dtype=np.float64),
                "action_names": list(c.action_names), "embodiment": c.embodiment,
                "control_hz": float(c.control_hz), "uncertainty": float(c.uncertainty),
                "policy_timing": {"infer_ms": float(c.timings.get("model_ms", result.batch_ms)),
                                  "policy_ms": float(c.timings.get("policy_ms", result.batch_ms))},
                "server_timing": {"infer_ms": server_ms, "queue_ms": result.queue_ms,
                                  "batch_size": result.batch_size},
            }
            await websocket.send_bytes(msgpack_pack(reply))
        except WebSocketDisconnect:
            return
        except Exception as e:  # noqa: BLE001 - report, keep the connection serving
            status, body = error_body(e)
            try:
                await websocket.send_text(f"VLA server error {status} {body['error']}: {body['detail']}")
            except Exception:  # noqa: BLE001 - the client is gone
                return
        engine.observe("ws", embodiment, status, time.perf_counter() - t0)


def build_app(engine_of: EngineGetter) -> Starlette:
    """The Starlette app; ``engine_of`` returns this worker's Engine (created when the service starts)."""

    async def ws_endpoint(websocket: WebSocket) -> None:
        await _openpi(websocket, engine_of())

    return Starlette(routes=[
        Route("/predict", _timed("predict", engine_of, _predict), methods=["POST"]),
        Route("/predict_batch", _timed("predict_batch", engine_of, _predict_batch), methods=["POST"]),
        Route("/act", _timed("act", engine_of, _act), methods=["POST"]),
        Route("/metadata", _timed("metadata", engine_of, _metadata), methods=["GET"]),
        WebSocketRoute("/", ws_endpoint),
    ])
