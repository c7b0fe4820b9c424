"""Prometheus metrics of the server, created once per worker process (after BentoML set its
multiprocess directory), and the counting of refusals wherever they happen (app or middleware)."""

from __future__ import annotations

from typing import Any

_METRICS: dict[str, Any] = {}
ROUTES = {"/predict": "predict", "/predict/upload": "predict", "/predict_batch": "predict_batch",
          "/metadata": "metadata", "/act": "act", "/": "ws"}


def metrics() -> dict[str, Any]:
    if not _METRICS:
        from prometheus_client import Counter, Histogram

        buckets = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
        _METRICS.update(
            requests=Counter("vla_requests", "Requests by route, embodiment and status", ["route", "embodiment", "status"]),
            refusals=Counter("vla_refusals", "Refused or failed requests by route, status and reason (the error code)",
                             ["route", "status", "reason"]),
            latency=Histogram("vla_request_duration_seconds", "Server time per request", ["route", "embodiment"], buckets=buckets),
            batch=Histogram("vla_batch_size", "Requests per policy.predict_batch call", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)),
            calls=Counter("vla_predict_batch_calls", "policy.predict_batch calls"),
            batched=Counter("vla_batched_requests", "Requests served by policy.predict_batch calls"),
        )
    return _METRICS


def route_of(path: str) -> str:
    """The route label of a request path (a small fixed set: label values must stay few)."""
    return ROUTES.get(path, "other")


def count_refusal(route: str, status: int, reason: str, embodiment: str = "none") -> None:
    """Count a refused request (status >= 400) under its route and reason."""
    m = metrics()
    m["requests"].labels(route, embodiment, str(status)).inc()
    m["refusals"].labels(route, str(status), reason).inc()
