"""Inference engine behind every route: validation, batching, deadlines, threads, metrics.

Concurrent requests (the typed BentoML APIs, multipart, openpi WebSocket, OpenVLA /act alike) are
merged into one ``policy.predict_batch`` call by our continuous batcher (serving/batcher.py): a
batch starts as soon as the model is free. BentoML's own ``batchable=True`` batches one API over
HTTP only, so it could not merge the WebSocket and /act traffic with /predict.

Requests are validated *before* they join a batch (``VLAPolicy.validate``: cameras, state, and the
instruction's length in tokens), so one bad observation cannot fail its neighbours or hold the
model. Every request carries a deadline (``min(max_latency_ms, timeout_s)`` after it arrived): one
whose deadline has passed is answered 503 and never started, checked again before each
per-embodiment group of a batch. Should a batch still fail, each request is retried alone so
every caller gets its own answer.
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

from vla.errors import UnknownEmbodimentError
from vla.types import ActionChunk, PredictRequest

from .batcher import ContinuousBatcher
from .codecs import BadRequest
from .schemas import MAX_INSTRUCTION_CHARS
from .settings import ServeSettings

log = logging.getLogger("vla.serving")


@dataclass
class Result:
    chunk: ActionChunk
    queue_ms: float  # waiting for a batch slot
    batch_ms: float  # the predict_batch call this request was part of
    batch_size: int


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
        self._batcher: ContinuousBatcher | None = None

    # ------------------------------------------------------------------ validation
    def embodiment_name(self, name: Any) -> str:
        """The requested embodiment, or the model's only one when none was given."""
        if name is None or (isinstance(name, str) and not name):
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
        """Reject what the policy would reject, before the request joins a batch (milliseconds)."""
        name = self.embodiment_name(req.embodiment)
        if isinstance(req.instruction, str) and len(req.instruction) > MAX_INSTRUCTION_CHARS:
            raise BadRequest("invalid_instruction", f"instruction is {len(req.instruction)} characters; "
                             f"the limit is {MAX_INSTRUCTION_CHARS}", status=422)
        req = PredictRequest(images=req.images, instruction=req.instruction, embodiment=name, state=req.state)
        return self.policy.validate(req, self.settings.max_instruction_tokens)

    # ------------------------------------------------------------------- inference
    async def predict(self, req: PredictRequest) -> Result:
        """One validated request -> its chunk, batched with whatever else is in flight."""
        if self._batcher is None:
            self._batcher = ContinuousBatcher(self._run_timed, self.settings.max_batch_size, self.deadline_s,
                                              self._overloaded)
        return await self._batcher.submit((req, time.perf_counter()))

    @property
    def deadline_s(self) -> float:
        """How long a request may wait for the model; past it BentoML has answered 504 anyway."""
        return min(self.settings.max_latency_ms / 1e3, float(self.settings.timeout_s))

    def _overloaded(self) -> BadRequest:
        return BadRequest(
            "overloaded",
            f"the request could not be started within {self.deadline_s * 1e3:.0f} ms "
            "(max_latency_ms, timeout_s); retry later",
            status=503,
        )

    async def _run_timed(self, items: Sequence[tuple[PredictRequest, float]]) -> list[Result | Exception]:
        """predict_batch per embodiment group in a worker thread; a group whose deadline passed is not run."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.settings.threads)
        start = time.perf_counter()
        groups: dict[str, list[int]] = {}
        for i, (r, _) in enumerate(items):  # parallel decoding batches one chunk shape at a time
            groups.setdefault(r.embodiment, []).append(i)
        out: list[Result | Exception] = [None] * len(items)  # type: ignore[list-item]
        for idx in groups.values():
            now = time.perf_counter()
            late = [i for i in idx if now - items[i][1] > self.deadline_s]
            for i in late:
                out[i] = self._overloaded()
            idx = [i for i in idx if i not in late]
            if not idx:
                continue
            group_start = time.perf_counter()
            for sub_idx, chunks in await self._call([items[i][0] for i in idx], idx):
                for i, c in zip(sub_idx, chunks):
                    out[i] = c if isinstance(c, Exception) else Result(
                        c, (group_start - items[i][1]) * 1e3, (time.perf_counter() - start) * 1e3, len(items))
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

    def observe(self, route: str, embodiment: Any, status: int, seconds: float) -> None:
        """Record one finished request under the embodiment it named, failed or not.

        A name the model does not know is labelled "unknown" (label values must stay a small set);
        a request that named none is labelled with the model's only embodiment, or "none".
        """
        if embodiment is None or (isinstance(embodiment, str) and not embodiment):
            embodiment = self.default_embodiment
        if embodiment is None:
            label = "none"
        else:
            label = embodiment if isinstance(embodiment, str) and embodiment in self.embodiments else "unknown"
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
