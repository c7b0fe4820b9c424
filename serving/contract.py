"""/docs.json as a true contract: valid OpenAPI 3.1, every status each route answers, runnable examples.

BentoML writes the document: it declares ``openapi: 3.0.2`` while pydantic's schemas use 3.1
(JSON Schema) keywords such as ``type: "null"`` and ``const``, and it lists 200/400/404/500 only.
``openapi_document`` fixes that: version 3.1.0 (``nullable``, a 3.0-only keyword, becomes a
``"null"`` type), each route's real statuses with our error
body, ``Retry-After`` on 503, and request examples built from the served checkpoint's first
embodiment (its real cameras and state size), so a client or fuzzer sending them reaches the model.
``DocsMiddleware`` applies it to the document BentoML serves.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Callable

from .schemas import EXAMPLE_OBSERVATION, EXAMPLE_PNG, ErrorBody

ERROR_STATUSES = {  # what each route can answer besides 200; 401 only when a token is set, 503 while loading
    "/predict": (400, 401, 408, 413, 415, 422, 503, 504),
    "/predict_batch": (400, 401, 408, 413, 415, 422, 503, 504),
    "/predict/upload": (400, 401, 408, 413, 415, 422, 503, 504),
    "/act": (400, 401, 408, 413, 422, 503, 504),
    "/metadata": (400, 401, 408, 413, 415, 503, 504),
    "/metrics": (401,),
    "/readyz": (503,),
}
_REASONS = {400: "Bad Request", 401: "Unauthorized", 408: "Request Timeout", 413: "Content Too Large",
            415: "Unsupported Media Type", 422: "Unprocessable Content", 503: "Service Unavailable",
            504: "Gateway Timeout"}


def example_observation(embodiment: dict[str, Any]) -> dict[str, Any]:
    """A /predict body the served policy accepts: its first embodiment's cameras and state size."""
    obs: dict[str, Any] = {"instruction": "pick up the red cube", "embodiment": embodiment["name"],
                           "images": {cam: EXAMPLE_PNG for cam in embodiment["cameras"]}}
    if embodiment.get("state_dim"):
        obs["state"] = [0.0] * int(embodiment["state_dim"])
    return obs


def example_act(embodiment: dict[str, Any]) -> dict[str, Any]:
    """An OpenVLA /act body the served policy accepts (json-numpy 8x8 grey frames)."""
    frame = {"__numpy__": base64.b64encode(bytes(8 * 8 * 3)).decode(), "dtype": "|u1", "shape": [8, 8, 3]}
    body: dict[str, Any] = {"image": frame, "instruction": "pick up the red cube", "unnorm_key": embodiment["name"]}
    body.update({cam: frame for cam in embodiment["cameras"][1:]})
    if embodiment.get("state_dim"):
        body["state"] = [0.0] * int(embodiment["state_dim"])
    return body


def _walk(node: Any, examples: dict[str, Any]) -> None:
    """``nullable`` (3.0 only) -> a "null" type; the static schema examples -> the served policy's."""
    if isinstance(node, dict):
        if node.pop("nullable", False):
            if isinstance(node.get("type"), str):
                node["type"] = [node["type"], "null"]
            elif "anyOf" in node and {"type": "null"} not in node["anyOf"]:
                node["anyOf"].append({"type": "null"})
        if "default" in node and node["default"] is None and isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]  # BentoML's inline schemas drop Optional's null
        key = json.dumps(node.get("example"), sort_keys=True)
        if key in examples:
            node["example"] = examples[key]
        for v in node.values():
            _walk(v, examples)
    elif isinstance(node, list):
        for v in node:
            _walk(v, examples)


def openapi_document(spec: dict[str, Any], embodiment: dict[str, Any] | None) -> dict[str, Any]:
    """BentoML's document -> a valid OpenAPI 3.1 document with all statuses and runnable examples."""
    spec = json.loads(json.dumps(spec))
    spec["openapi"] = "3.1.0"
    examples = {}
    if embodiment is not None:
        obs = example_observation(embodiment)
        examples = {json.dumps(EXAMPLE_OBSERVATION, sort_keys=True): obs,
                    json.dumps({"requests": [EXAMPLE_OBSERVATION]}, sort_keys=True): {"requests": [obs]}}
    _walk(spec, examples)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorBody"] = ErrorBody.model_json_schema()
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for path, statuses in ERROR_STATUSES.items():
        for op in spec.get("paths", {}).get(path, {}).values():
            responses = op.setdefault("responses", {})
            for status in (404, 500):  # BentoML's defaults: no route here answers them
                responses.pop(str(status), None)
            for status in statuses:
                responses[str(status)] = {"description": _REASONS[status], "content": error}
            if "503" in responses:
                responses["503"] = {**responses["503"], "headers": {"Retry-After": {
                    "description": "seconds to wait before retrying", "schema": {"type": "integer"}}}}
    metadata = spec.get("paths", {}).get("/metadata", {})
    if "post" in metadata:  # GET /metadata answers the same (FastAPI route, kept out of its own schema)
        metadata["get"] = {k: v for k, v in metadata["post"].items() if k != "requestBody"}
        metadata["get"]["responses"] = {k: v for k, v in metadata["get"]["responses"].items() if k != "415"}
    if embodiment is not None:
        for path, example in (("/predict", obs), ("/predict_batch", {"requests": [obs]}),
                              ("/act", example_act(embodiment))):
            op = spec.get("paths", {}).get(path, {}).get("post")
            if op is None:
                continue
            media = op["requestBody"]["content"]["application/json"]
            media["example"] = example
    return spec


class DocsMiddleware:
    """Serve ``openapi_document(...)`` of BentoML's /docs.json; ``embodiment()`` -> the example robot."""

    def __init__(self, app: Callable, embodiment: Callable[[], dict[str, Any] | None]):
        self.app, self.embodiment = app, embodiment

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] != "/docs.json":
            return await self.app(scope, receive, send)
        start: dict | None = None
        chunks: list[bytes] = []

        async def capture(message: dict) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body") or start is None:
                return
            body = b"".join(chunks)
            if start["status"] == 200:
                body = json.dumps(openapi_document(json.loads(body), self.embodiment())).encode()
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            await send({**start, "headers": headers + [(b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, capture)
