"""The BentoML service: ``bentoml serve vla.serving.service:VLAService`` (or ``vla serve``).

Typed ``@bentoml.api`` endpoints (``/predict``, ``/predict_batch``, ``/metadata``; schemas in
serving/schemas.py) sit next to a mounted FastAPI app for what a typed API cannot express
(multipart upload, OpenVLA ``/act``, ``GET /metadata``, openpi's WebSocket; serving/routes.py).
All of them share one Engine per worker process, so every protocol joins the same batches.

Each worker loads the policy in a background thread, so its probes answer while it loads:
``/readyz`` is 503 until *every* worker of the server has its model (a worker that died or is
being restarted counts as not ready), and requests meanwhile answer 503 ``loading``.
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
import time
from typing import Any

import bentoml
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from vla.types import PredictRequest

from .codecs import BadRequest
from .contract import DocsMiddleware
from .disconnect import unless_disconnected
from .engine import Engine, chunk_json
from .errors import SchemaRefusalLogFilter, ValidationErrorShape
from .guard import TYPED_APIS, GuardMiddleware
from .protocol import parse_observation
from .routes import answer, build_app, engine_metadata, json_response
from .schemas import BatchAnswer, BatchRequest, Chunk, Metadata, Observation
from .settings import ServeSettings, default_model
from .workers import WorkerBoard

log = logging.getLogger("vla.serving")
logging.getLogger("bentoml._internal.server.http_app").addFilter(SchemaRefusalLogFilter())
SETTINGS = ServeSettings.from_env()  # read at import: BentoML sizes workers/threads from the decorator


def _engine() -> Engine:
    service = bentoml.get_current_service()
    if service is None:
        raise BadRequest("loading", "the service is starting; retry in a few seconds", status=503)
    return service.ready_engine()


@bentoml.service(
    name="vla",
    workers=SETTINGS.workers,
    threads=SETTINGS.threads,
    traffic={"timeout": SETTINGS.timeout_s},
)
@bentoml.asgi_app(build_app(_engine), path="/")
class VLAService:
    """A VLA policy: camera images + instruction -> the next actions of a robot, in physical units."""

    def __init__(self) -> None:
        self.settings = SETTINGS
        self.engine: Engine | None = None
        self.load_error: str | None = None
        self.board = WorkerBoard.for_this_server(SETTINGS.workers)
        self.board.report("loading")
        threading.Thread(target=self._load, name="vla-load", daemon=True).start()

    def _load(self) -> None:
        try:
            from vla.policy import VLAPolicy

            if self.settings.torch_threads:
                import torch

                torch.set_num_threads(self.settings.torch_threads)
            model = self.settings.model or default_model()
            log.info("loading policy from %s", model)
            t0 = time.perf_counter()
            policy = VLAPolicy.from_pretrained(model, device=self.settings.device, dtype=self.settings.dtype)
            log.info("dtype %s (%s)", policy.precision.name, policy.precision.reason)
            engine = Engine(policy, self.settings)
            # A full garbage collection walks every object torch, transformers and BentoML created
            # (~450k, 340-390 ms on 2 busy cores): that pause was the 350-400 ms p99 under HTTP load.
            # Frozen objects are never scanned again; only what requests allocate is.
            gc.freeze()
            self.engine = engine
            self.board.report("ready")
            log.info("serving embodiments %s (loaded in %.1f s)", sorted(engine.embodiments), time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 - reported by /readyz and every request, not a crash loop
            self.load_error = f"{type(e).__name__}: {e}"
            self.board.report("failed")
            log.exception("the policy failed to load")

    @bentoml.on_shutdown
    def _close_board(self) -> None:
        self.board.close()

    def ready_engine(self) -> Engine:
        if self.engine is not None:
            return self.engine
        if self.load_error:
            raise BadRequest("model_failed", f"the model failed to load ({self.load_error}); see the server log",
                             status=503)
        raise BadRequest("loading", "the model is still loading; retry in a few seconds", status=503)

    def __is_ready__(self) -> bool:
        """/readyz: every worker of this server has its model loaded (reads a few small files)."""
        return self.engine is not None and self.board.all_ready()

    @bentoml.api(route="/predict", input_spec=Observation, output_spec=Chunk)
    async def predict(self, instruction: str, images: dict[str, Any], ctx: bentoml.Context,
                      embodiment: str | None = None, state: list[float] | None = None) -> Chunk | Response:
        """The next action chunk for one observation (images as base64 PNG/JPEG or raw arrays)."""

        async def handler(engine: Engine, named: list) -> Response:
            t0 = time.perf_counter()
            named.append(embodiment)
            obs = Observation.model_construct(instruction=instruction, images=images, embodiment=embodiment, state=state)
            reqs = await _checked(engine, [obs])
            result = await unless_disconnected(ctx.request.receive, engine.predict(reqs[0]))
            return json_response(200, chunk_json(result, (time.perf_counter() - t0) * 1e3))

        return _with_status(ctx, await answer("predict", _engine, handler))

    @bentoml.api(route="/predict_batch", input_spec=BatchRequest, output_spec=BatchAnswer)
    async def predict_batch(self, requests: list[Observation], ctx: bentoml.Context) -> BatchAnswer | Response:
        """Chunks for several observations (up to 256), interleaved fairly with every other request."""

        async def handler(engine: Engine, named: list) -> Response:
            t0 = time.perf_counter()
            names = {r.embodiment for r in requests}
            named.append(names.pop() if len(names) == 1 else None)
            reqs = await _checked(engine, requests)
            results = await unless_disconnected(ctx.request.receive, engine.predict_many(reqs))
            ms = (time.perf_counter() - t0) * 1e3
            return json_response(200, {"results": [chunk_json(r, ms) for r in results]})

        return _with_status(ctx, await answer("predict_batch", _engine, handler))

    @bentoml.api(route="/metadata", output_spec=Metadata)
    async def metadata(self) -> Metadata | Response:
        """Embodiments (action names and sizes, cameras, control rate), decoding and the server's limits.

        ``GET /metadata`` answers the same.
        """

        async def handler(engine: Engine, named: list) -> Response:
            return json_response(200, engine_metadata(engine))

        return await answer("metadata", _engine, handler)


def _with_status(ctx: bentoml.Context, response: Response) -> Response:
    """BentoML gives an API that takes a Context the context's status: make it the response's."""
    ctx.response.status_code = response.status_code
    return response


async def _checked(engine: Engine, observations: list[Observation]) -> list[PredictRequest]:
    """Check typed observations off the event loop (their images are decoded later, in their forward)."""
    return await run_in_threadpool(lambda: engine.check_all([parse_observation(o) for o in observations]))


@functools.cache
def _example_embodiment() -> dict[str, Any] | None:
    """The served checkpoint's first embodiment, read from its config (the model may still be loading)."""
    from vla.configuration import VLAConfig

    try:
        emb = VLAConfig.load(SETTINGS.model or default_model()).embodiments[0]
    except Exception:  # noqa: BLE001 - a hub id or no default policy: the static examples stay
        return None
    return {"name": emb.name, "cameras": list(emb.cameras), "state_dim": emb.state_dim}


VLAService.add_asgi_middleware(DocsMiddleware, embodiment=_example_embodiment)
VLAService.add_asgi_middleware(ValidationErrorShape, paths=TYPED_APIS)
VLAService.add_asgi_middleware(GuardMiddleware, token=SETTINGS.token, max_body_bytes=SETTINGS.max_body_bytes,
                               read_timeout_s=SETTINGS.read_timeout_s)
