"""Server settings, passed from ``vla serve`` to the BentoML worker processes through env vars.

Env vars (all optional) so ``bentoml serve vla.serving.service:VLAService`` works too:
``VLA_MODEL_DIR`` (checkpoint dir or hub id; default: the shipped default policy), ``VLA_DEVICE``,
``VLA_WORKERS``, ``VLA_THREADS`` (concurrent model calls per worker), ``VLA_TORCH_THREADS``
(torch intra-op threads per worker), ``VLA_MAX_BATCH_SIZE`` (1 = no batching),
``VLA_MAX_LATENCY_MS``, ``VLA_API_TOKEN`` (bearer token; unset = no auth), ``VLA_MAX_BODY_MB``,
``VLA_MAX_IMAGE_SIDE``, ``VLA_MAX_INSTRUCTION_TOKENS``, ``VLA_TIMEOUT_S``, ``VLA_READ_TIMEOUT_S``,
``VLA_DTYPE`` (auto, float32 or bfloat16), ``VLA_BATCH_SLICE`` (observations of one request per
forward), ``VLA_MAX_REQUEST_MEGAPIXELS``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from vla.errors import CheckpointError, ConfigError
from vla.precision import DTYPE_CHOICES

ENV = {
    "model": "VLA_MODEL_DIR",
    "device": "VLA_DEVICE",
    "workers": "VLA_WORKERS",
    "threads": "VLA_THREADS",
    "torch_threads": "VLA_TORCH_THREADS",
    "max_batch_size": "VLA_MAX_BATCH_SIZE",
    "max_latency_ms": "VLA_MAX_LATENCY_MS",
    "token": "VLA_API_TOKEN",
    "max_body_mb": "VLA_MAX_BODY_MB",
    "max_image_side": "VLA_MAX_IMAGE_SIDE",
    "timeout_s": "VLA_TIMEOUT_S",
    "max_instruction_tokens": "VLA_MAX_INSTRUCTION_TOKENS",
    "read_timeout_s": "VLA_READ_TIMEOUT_S",
    "batch_slice": "VLA_BATCH_SLICE",
    "max_request_megapixels": "VLA_MAX_REQUEST_MEGAPIXELS",
    "dtype": "VLA_DTYPE",
}


# uvicorn closes larger WebSocket messages itself (code 1009) before the app sees them, and
# BentoML does not expose uvicorn's ws_max_size: frames are limited to min(--max-body-mb, this).
UVICORN_WS_MAX_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ServeSettings:
    model: str | None = None
    device: str | None = None
    workers: int = 1
    threads: int = 1
    torch_threads: int | None = None  # torch intra-op threads per worker (None: torch's default)
    max_batch_size: int = 32
    max_latency_ms: int = 10_000
    token: str | None = None
    max_body_mb: float = 8.0
    max_image_side: int = 2048
    timeout_s: int = 60
    max_instruction_tokens: int = 256  # an instruction longer than this holds the model for seconds
    read_timeout_s: int = 10  # a request body must arrive within this (slow uploads answer 408)
    # One observation of a multi-observation request per forward: on a compute-bound model another
    # robot then waits for about one forward of its own size. Raise it on a GPU, where a forward of
    # a few observations costs about what one does.
    batch_slice: int = 1
    # 72 MP passes one observation of sixteen 2048x2048 cameras (67 MP); 256 observations of two
    # 224x224 cameras are 26 MP. Only one forward's worth of a request is decoded at a time.
    max_request_megapixels: int = 72
    dtype: str = "auto"  # vla.precision: bf16 where the hardware runs it fast, else fp32

    def __post_init__(self) -> None:
        for name in ("workers", "threads", "torch_threads", "max_batch_size", "max_latency_ms", "max_image_side",
                     "timeout_s", "max_instruction_tokens", "read_timeout_s", "batch_slice", "max_request_megapixels"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_body_mb <= 0:
            raise ConfigError(f"max_body_mb must be > 0, got {self.max_body_mb}")
        if self.dtype not in DTYPE_CHOICES:
            raise ConfigError(f"dtype must be one of {DTYPE_CHOICES}, got {self.dtype!r}")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def max_request_pixels(self) -> int:
        return self.max_request_megapixels * 1_000_000

    @property
    def max_frame_bytes(self) -> int:
        """The WebSocket frame limit: --max-body-mb, within what the server runtime accepts at all."""
        return min(self.max_body_bytes, UVICORN_WS_MAX_BYTES)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "ServeSettings":
        env = os.environ if environ is None else environ
        kw: dict = {}
        for f in fields(cls):
            raw = env.get(ENV[f.name])
            if raw is None or raw == "":
                continue
            try:
                kw[f.name] = float(raw) if f.name == "max_body_mb" else int(raw) if f.type.startswith("int") else raw
            except ValueError:
                raise ConfigError(f"env var {ENV[f.name]}={raw!r} must be a number") from None
        return cls(**kw)

    def to_env(self) -> dict[str, str]:
        return {ENV[f.name]: str(v) for f in fields(self) if (v := getattr(self, f.name)) is not None}


def default_model() -> str:
    """The shipped default policy, or a clear error when this install has none."""
    try:
        from vla.defaults import default_policy_path
    except ImportError:
        raise CheckpointError(
            f"no model given and this install ships no default policy: pass --model DIR (or set {ENV['model']})"
        ) from None
    return str(default_policy_path())
