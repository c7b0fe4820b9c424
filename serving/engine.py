"""Inference engine behind every route: validation, batching, threads, metrics.

Concurrent requests (HTTP JSON, multipart, openpi WebSocket, OpenVLA /act alike) are merged into
one ``policy.predict_batch`` call, by BentoML's adaptive dispatcher (default: ``CorkDispatcher``,
the class behind ``@bentoml.api(batchable=True)``, used in-process: BentoML only batches a
batchable API called over HTTP, and a second HTTP hop would re-serialize the images) or by the
continuous batcher (serving/batcher.py). Requests are validated *before*
they join a batch, so one bad observation cannot fail its neighbours; should a batch still fail,
each request is retried alone so every caller gets its own answer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import anyio
import numpy as np

from vla.errors import InvalidInputError, UnknownEmbodimentError, VLAError
from vla.types import ActionChunk, PredictRequest

from .batcher import ContinuousBatcher
from .codecs import BadRequest
from .settings import ServeSettings

log = logging.getLogger("vla.serving")
MAX_INSTRUCTION_CHARS = 4096
MAX_BATCH_REQUESTS = 256


@dataclass
class Result:
    chunk: ActionChunk
    queue_ms: float  # waiting for a batch slot
    batch_ms: float  # the predict_batch call this request was part of
    batch_size: int


def error_body(exc: BaseException) -> tuple[int, dict[str, str]]:
    """Map an exception to (HTTP status, {"error", "detail"}). Bad requests are 4xx, never 500."""
    if isinstance(exc, BadRequest):
        return exc.status, exc.to_dict()
    if isinstance(exc, UnknownEmbodimentError):
        return 422, {"error": "unknown_embodiment", "detail": str(exc)}
    if isinstance(exc, InvalidInputError):
        return 422, {"error": "invalid_input", "detail": str(exc)}
    if isinstance(exc, VLAError):
        return 500, {"error": "model_error", "detail": f"{type(exc).__name__}: {exc}"}
    log.exception("unexpected server error", exc_info=exc)
    return 500, {"error": "internal_error", "detail": f"{type(exc).__name__}; see the server log"}


_METRICS: dict[str, Any] = {}


def _metrics() -> dict[str, Any]:
    """Prometheus metrics, created once per process (after BentoML set its multiprocess dir)."""
    if not _METRICS:
        from prometheus_client import Counter, Histogram

        buckets = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
        _METRICS.update(
            requests=Counter("vla_requests", "Requests by route, embodiment and status", ["route", "embodiment", "status"]),
            latency=Histogram("vla_request_duration_seconds", "Server time per request", ["route", "embodiment"], buckets=buckets),
            batch=Histogram("vla_batch_size", "Requests per policy.predict_batch call", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)),
            calls=Counter("vla_predict_batch_calls", "policy.predict_batch calls"),
            batched=Counter("vla_batched_requests", "Requests served by policy.predict_batch calls"),
        )
    return _METRICS


class Engine:
    """Owns the policy: validates requests, batches them and runs the model off the event loop."""

    def __init__(self, policy: Any, settings: ServeSettings):
        self.policy, self.settings = policy, settings
        self.embodiments = dict(policy.embodiments)
        meta = policy.metadata()
        self.uses_state = bool(meta.get("uses_state", False))
        self.default_embodiment = next(iter(self.embodiments)) if len(self.embodiments) == 1 else None
        self.metrics = _metrics()
        self._limiter: anyio.CapacityLimiter | None = None
        self._dispatcher: Any = None

    # ------------------------------------------------------------------ validation
    def embodiment_name(self, name: Any) -> str:
        """The requested embodiment, or the model's only one when none was given."""
        if name is None or name == "":
            if self.default_embodiment is None:
                raise BadRequest(
                    "missing_embodiment",
                    f"this model serves several embodiments {sorted(self.embodiments)}; name one in the request",
                    status=422,
                )
            return self.default_embodiment
        if not isinstance(name, str):
            raise BadRequest("invalid_embodiment", f"embodiment must be a string, got {type(name).__name__}")
        if name not in self.embodiments:
            raise UnknownEmbodimentError(name, list(self.embodiments))
        return name

    def check(self, req: PredictRequest) -> PredictRequest:
        """Reject what the policy would reject, before the request joins a batch."""
        emb = self.embodiments[self.embodiment_name(req.embodiment)]
        if not isinstance(req.instruction, str) or not req.instruction.strip():
            raise BadRequest("invalid_instruction", "instruction must be a non-empty string", status=422)
        if len(req.instruction) > MAX_INSTRUCTION_CHARS:
            raise BadRequest("invalid_instruction", f"instruction is {len(req.instruction)} characters; the limit is {MAX_INSTRUCTION_CHARS}", status=422)
        images = req.images
        if not isinstance(images, dict) or set(images) != set(emb.cameras):
            got = sorted(images) if isinstance(images, dict) else f"{len(images)} unnamed images"
            raise BadRequest(
                "wrong_cameras",
                f"embodiment {emb.name!r} needs exactly the cameras {emb.cameras}; got {got}. "
                "Key each image by its camera name.",
                status=422,
            )
        state = req.state
        if state is not None:
            try:
                state = np.asarray(state, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise BadRequest("invalid_state", "state must be a flat list of numbers", status=422) from None
            if state.size != emb.state_dim:
                raise BadRequest(
                    "invalid_state",
                    f"state has {state.size} values; embodiment {emb.name!r} expects {emb.state_dim}: {emb.state_names}",
                    status=422,
                )
            if not np.all(np.isfinite(state)):
                raise BadRequest("invalid_state", "state contains NaN or inf", status=422)
        elif self.uses_state and emb.state_dim:
            raise BadRequest(
                "missing_state",
                f"this model conditions on the robot state: send 'state' with {emb.state_dim} values {emb.state_names}",
                status=422,
            )
        return PredictRequest(images=images, instruction=req.instruction, embodiment=emb.name, state=state)

    # ------------------------------------------------------------------- inference
    async def predict(self, req: PredictRequest) -> Result:
        """One validated request -> its chunk, batched with whatever else is in flight."""
        t0 = time.perf_counter()
        if self.settings.max_batch_size <= 1:
            out = (await self._run_timed([(req, t0)]))[0]
            if isinstance(out, Exception):
                raise out
            return out
        if self._dispatcher is None:
            self._dispatcher = self._make_dispatcher()
        return await self._dispatcher((req, t0))

    def _overloaded(self) -> BadRequest:
        return BadRequest(
            "overloaded",
            f"the request could not be scheduled within max_latency_ms={self.settings.max_latency_ms}; retry later",
            status=503,
        )

    def _make_dispatcher(self):
        if self.settings.batcher == "continuous":
            batcher = ContinuousBatcher(self._run_timed, self.settings.max_batch_size,
                                        self.settings.max_latency_ms / 1e3, self._overloaded)
            return batcher.submit
        from bentoml._internal.marshal.dispatcher import CorkDispatcher

        def overloaded() -> None:
            raise self._overloaded()

        dispatcher = CorkDispatcher(
            max_latency_in_ms=self.settings.max_latency_ms, max_batch_size=self.settings.max_batch_size,
            fallback=overloaded, get_batch_size=lambda _: 1, batch_dim=(0, 0),
        )
        return dispatcher(self._run_timed)

    async def _run_timed(self, items: Sequence[tuple[PredictRequest, float]]) -> list[Result | Exception]:
        start = time.perf_counter()
        results = await self._run_batch([r for r, _ in items], start)
        for res, (_, t0) in zip(results, items):
            if isinstance(res, Result):
                res.queue_ms = (start - t0) * 1e3
        return results

    async def _run_batch(self, reqs: list[PredictRequest], start: float) -> list[Result | Exception]:
        """predict_batch per embodiment group in a worker thread; a failing group is retried per request."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.settings.threads)
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(reqs):  # parallel decoding batches one chunk shape at a time
            groups.setdefault(r.embodiment, []).append(i)
        out: list[Result | Exception] = [None] * len(reqs)  # type: ignore[list-item]
        for idx in groups.values():
            batch = [reqs[i] for i in idx]
            for sub_idx, chunks in await self._call(batch, idx):
                for i, c in zip(sub_idx, chunks):
                    out[i] = c if isinstance(c, Exception) else Result(c, 0.0, (time.perf_counter() - start) * 1e3, len(reqs))
        return out

    async def _call(self, batch: list[PredictRequest], idx: list[int]) -> list[tuple[list[int], list]]:
        try:
            chunks = await anyio.to_thread.run_sync(self.policy.predict_batch, batch, limiter=self._limiter)
            self._count(len(batch))
            return [(idx, chunks)]
        except Exception as e:
            if len(batch) == 1:
                return [(idx, [e])]
            log.warning("batch of %d failed (%s); retrying one by one", len(batch), e)
            parts = []
            for i, r in zip(idx, batch):
                parts.extend(await self._call([r], [i]))
            return parts

    def _count(self, n: int) -> None:
        self.metrics["calls"].inc()
        self.metrics["batched"].inc(n)
        self.metrics["batch"].observe(n)

    def observe(self, route: str, embodiment: str | None, status: int, seconds: float) -> None:
        """Record one finished request; unknown embodiment names are not used as labels (cardinality)."""
        label = embodiment if embodiment in self.embodiments else "invalid"
        self.metrics["requests"].labels(route, label, str(status)).inc()
        if status < 400:
            self.metrics["latency"].labels(route, label).observe(seconds)


def chunk_json(result: Result, server_ms: float) -> dict[str, Any]:
    """The /predict response body for one result."""
    c = result.chunk
    timings = {k: float(v) for k, v in (c.timings or {}).items() if isinstance(v, (int, float))}
    timings.update(server_ms=server_ms, queue_ms=result.queue_ms, batch_ms=result.batch_ms,
                   batch_size=float(result.batch_size))
    timings.setdefault("model_ms", result.batch_ms)
    u = float(c.uncertainty)
    return {
        "actions": np.asarray(c.actions, dtype=np.float64).tolist(),
        "action_names": list(c.action_names),
        "embodiment": c.embodiment,
        "control_hz": float(c.control_hz),
        "uncertainty": u if math.isfinite(u) else None,
        "timings": timings,
    }


async def gather_predictions(engine: Engine, reqs: list[PredictRequest]) -> list[Result]:
    """Submit several requests at once (they join the same batches); the first error wins."""
    return list(await asyncio.gather(*(engine.predict(r) for r in reqs)))
