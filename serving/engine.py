"""Inference engine behind every route: validation, batching, deadlines, threads, metrics.

Concurrent requests (the typed BentoML APIs, multipart, openpi WebSocket, OpenVLA /act alike) are
merged into one ``policy.predict_batch`` call by our fair continuous batcher (serving/batcher.py):
a forward starts as soon as the model is free and takes a slice of every waiting request in turn.
BentoML's own ``batchable=True`` batches one API over HTTP only, so it could not merge the
WebSocket and /act traffic with /predict.

Requests are checked *before* they join a batch, cheapest first: embodiment, instruction length
in tokens, camera set and state (``VLAPolicy.validate``), then each image's decode cost from its
headers and the request's total pixels. So one bad observation cannot fail its neighbours or
hold the model. Images are decoded only when their forward comes. Every request carries a
deadline (``min(max_latency_ms, timeout_s)`` after it arrived): work not started by then is
answered 503 and never run, and a multi-observation request the measured speed says cannot make
it is refused up front (413). Should a batch still fail, each request is retried alone so every
caller gets its own answer.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Hashable, Sequence

import anyio

from vla.client import wire
from vla.errors import UnknownEmbodimentError
from vla.types import ActionChunk, PredictRequest

from .batcher import FairBatcher
from .codecs import BadRequest, probe_image
from .metrics import metrics
from .schemas import MAX_INSTRUCTION_CHARS
from .settings import ServeSettings

log = logging.getLogger("vla.serving")


@dataclass
class Result:
    chunk: ActionChunk
    queue_ms: float  # waiting for a batch slot
    batch_ms: float  # the predict_batch call this request was part of
    batch_size: int


class Engine:
    """Owns the policy: validates requests, batches them and runs the model off the event loop."""

    def __init__(self, policy: Any, settings: ServeSettings):
        self.policy, self.settings = policy, settings
        self.embodiments = dict(policy.embodiments)
        meta = policy.metadata()
        self.uses_state = bool(meta.get("uses_state", False))
        self.default_embodiment = policy.default_embodiment
        self.metrics = metrics()
        self._limiter: anyio.CapacityLimiter | None = None
        self._batcher: FairBatcher | None = None
        self._obs_s = 0.0  # measured seconds per observation (moving average); 0 until the first forward

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
        """Reject what the policy would reject, before the request joins a batch (milliseconds).

        The embodiment, instruction, camera set and state come first, then each image's decode
        cost is bounded from its headers (format, side, JPEG scans); no pixel is decoded here.
        """
        return self.check_all([req])[0]

    def check_all(self, reqs: Sequence[PredictRequest]) -> list[PredictRequest]:
        """``check`` each observation of one request, then its decoded pixels against the request's cap."""
        checked = []
        for i, r in enumerate(reqs):  # every observation's cheap checks before any image is looked at
            try:
                checked.append(self._validate(r))
            except BadRequest as e:
                raise BadRequest(e.code, f"requests[{i}]: {e.detail}", e.status) if len(reqs) > 1 else e from None
            except Exception as e:  # noqa: BLE001 - name the observation, keep the error's type and status
                if len(reqs) > 1:
                    e.args = (f"requests[{i}]: {e}",)
                raise
        out, pixels, cap = [], 0, self.settings.max_request_pixels
        for i, req in enumerate(checked):
            where = f"requests[{i}]: " if len(reqs) > 1 else ""
            pending = {cam: probe_image(img, self.settings.max_image_side, f"{where}camera {cam!r}")
                       for cam, img in req.images.items()}
            pixels += sum(p.pixels for p in pending.values())
            if pixels > cap:
                raise BadRequest(
                    "too_many_pixels",
                    f"{where}the images of this request add up to more than {cap} pixels "
                    f"({self.settings.max_request_megapixels} megapixels, --max-request-megapixels); send smaller "
                    "images (the model works at a few hundred pixels per side) or fewer observations per request",
                    status=413)
            out.append(replace(req, images=pending))
        return out

    def _validate(self, req: PredictRequest) -> PredictRequest:
        name = self.embodiment_name(req.embodiment)
        if isinstance(req.instruction, str) and len(req.instruction) > MAX_INSTRUCTION_CHARS:
            raise BadRequest("invalid_instruction", f"instruction is {len(req.instruction)} characters; "
                             f"the limit is {MAX_INSTRUCTION_CHARS}", status=422)
        req = PredictRequest(images=req.images, instruction=req.instruction, embodiment=name, state=req.state)
        return self.policy.validate(req, self.settings.max_instruction_tokens)

    # ------------------------------------------------------------------- inference
    async def predict(self, req: PredictRequest, key: Hashable | None = None) -> Result:
        """One checked request -> its chunk, batched with whatever else is in flight.

        ``key`` names the queue it waits in (a WebSocket connection); None: a queue of its own.
        """
        return (await self.predict_many([req], key))[0]

    async def predict_many(self, reqs: Sequence[PredictRequest], key: Hashable | None = None) -> list[Result]:
        """Checked observations of one request -> their chunks, interleaved fairly with other requests.

        Refused up front (413) when the server's measured time per observation says they cannot all
        start within the deadline; the first failure fails the request and drops its remaining work.
        """
        if self._batcher is None:
            self._batcher = FairBatcher(self._run_timed, self.settings.max_batch_size, self.settings.batch_slice,
                                        self._overloaded)
        predicted = len(reqs) * self._obs_s
        if len(reqs) > 1 and predicted > self.deadline_s:
            fits = max(1, int(self.deadline_s / self._obs_s))
            raise BadRequest(
                "batch_too_slow",
                f"{len(reqs)} observations would take about {predicted:.1f} s at this server's "
                f"{self._obs_s * 1e3:.0f} ms per observation; requests must start within {self.deadline_s:g} s "
                f"(--max-latency-ms, --timeout-s). Send at most {fits} observations per request.",
                status=413)
        t0 = time.perf_counter()
        return await self._batcher.submit(object() if key is None else key, [(r, t0) for r in reqs],
                                          t0 + self.deadline_s)

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
        """Decode, then predict_batch per embodiment group, in a worker thread."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.settings.threads)
        start = time.perf_counter()
        groups: dict[str, list[int]] = {}
        for i, (r, _) in enumerate(items):  # parallel decoding batches one chunk shape at a time
            groups.setdefault(r.embodiment, []).append(i)
        out: list[Result | Exception] = [None] * len(items)  # type: ignore[list-item]
        for idx in groups.values():
            group_start = time.perf_counter()
            for sub_idx, chunks in await self._call([items[i][0] for i in idx], idx):
                for i, c in zip(sub_idx, chunks):
                    out[i] = c if isinstance(c, Exception) else Result(
                        c, (group_start - items[i][1]) * 1e3, (time.perf_counter() - start) * 1e3, len(items))
        return out

    async def _call(self, batch: list[PredictRequest], idx: list[int]) -> list[tuple[list[int], list]]:
        """Decode the images of ``batch`` (now that their turn has come) and run the model on them.

        An image that fails to decode fails its own request only. The decoded pixels live as long
        as this forward: nothing keeps them afterwards.
        """
        t0 = time.perf_counter()
        decoded = await anyio.to_thread.run_sync(_decode, batch, limiter=self._limiter)
        out = [([i], [r]) for i, r in zip(idx, decoded) if isinstance(r, Exception)]
        ok = [(i, r) for i, r in zip(idx, decoded) if not isinstance(r, Exception)]
        if ok:
            out += await self._predict([r for _, r in ok], [i for i, _ in ok])
            # what one observation costs, decoding included: it predicts whether a batch can make its deadline
            per_obs = (time.perf_counter() - t0) / len(batch)
            self._obs_s = per_obs if self._obs_s == 0 else 0.8 * self._obs_s + 0.2 * per_obs
        return out

    async def _predict(self, batch: list[PredictRequest], idx: list[int]) -> list[tuple[list[int], list]]:
        try:
            chunks = await anyio.to_thread.run_sync(partial(self.policy.predict_batch, validated=True), batch,
                                                     limiter=self._limiter)
            self._count(len(batch))
            return [(idx, chunks)]
        except Exception as e:
            if len(batch) == 1:
                return [(idx, [e])]
            log.warning("batch of %d failed (%s); retrying one by one", len(batch), e)
            parts = []
            for i, r in zip(idx, batch):
                parts.extend(await self._predict([r], [i]))
            return parts

    def _count(self, n: int) -> None:
        self.metrics["calls"].inc()
        self.metrics["batched"].inc(n)
        self.metrics["batch"].observe(n)

    def observe(self, route: str, embodiment: Any, status: int, seconds: float, reason: str | None = None) -> None:
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
        if status >= 400:
            self.metrics["refusals"].labels(route, str(status), reason or "error").inc()
        else:
            self.metrics["latency"].labels(route, label).observe(seconds)


def _decode(batch: list[PredictRequest]) -> list[PredictRequest | Exception]:
    """Each request with its images decoded, or the error that its images raised."""
    out: list[PredictRequest | Exception] = []
    for r in batch:
        try:
            out.append(replace(r, images={cam: img.decode() for cam, img in r.images.items()}))
        except Exception as e:  # noqa: BLE001 - corrupt pixel data: that request's own 400
            out.append(e)
    return out


def chunk_json(result: Result, server_ms: float) -> dict[str, Any]:
    """The /predict response body for one result."""
    c = result.chunk
    timings = {k: float(v) for k, v in (c.timings or {}).items() if isinstance(v, (int, float))}
    timings.update(server_ms=server_ms, queue_ms=result.queue_ms, batch_ms=result.batch_ms,
                   batch_size=float(result.batch_size))
    timings.setdefault("model_ms", result.batch_ms)
    return wire.chunk_json(c, timings)
