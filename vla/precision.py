"""Which floating-point type a policy runs in: chosen from the hardware, then confirmed by measurement.

bf16 is fast where the hardware has bf16 matrix units (AMX or AVX512-BF16 on a CPU, a bf16-capable GPU):
a 2048^3 matmul runs 5-8x faster than fp32 on an AMX Xeon. Elsewhere it is emulated and *slower*
(about 8x slower on an AVX2-only CPU, measured in ``benchmarks/bench_predict.py``). So ``auto``:

1. on a GPU, picks bf16 when ``torch.cuda.is_bf16_supported()``;
2. on a CPU, reads the CPU's flags (``amx_bf16`` / ``avx512_bf16`` in ``/proc/cpuinfo``); with neither it
   keeps fp32 without measuring anything;
3. where the flags say bf16 (or cannot be read, e.g. not on Linux), times a short bf16 and fp32 matmul
   (~0.1 s, once per process) and picks bf16 only if it is clearly faster.

``VLA_CPU_CAPABILITY`` (``amx``, ``avx512_bf16`` or ``none``) overrides what the flags say, e.g. to check
that a machine without bf16 keeps fp32.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:  # torch is imported where it is used: the CLIs read DTYPE_CHOICES without it
    import torch

DTYPE_CHOICES = ("auto", "float32", "bfloat16")
CAPABILITY_ENV = "VLA_CPU_CAPABILITY"
CAPABILITIES = ("amx", "avx512_bf16", "none")
PROBE_MIN_SPEEDUP = 1.3  # bf16 must beat fp32 by this much in the probe to be chosen
_ALIASES = {"fp32": "float32", "float": "float32", "bf16": "bfloat16"}


@dataclass(frozen=True)
class Precision:
    """The dtype a model runs in, and why it was chosen (printed, and recorded in /metadata and provenance)."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def cpu_name() -> str:
    """The CPU's model name (printed by every benchmark)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_capability() -> str | None:
    """``amx``, ``avx512_bf16`` or ``none`` from the CPU flags (or ``VLA_CPU_CAPABILITY``); None if unreadable."""
    forced = os.environ.get(CAPABILITY_ENV)
    if forced:
        if forced not in CAPABILITIES:
            raise ConfigError(f"{CAPABILITY_ENV}={forced!r} is not one of {CAPABILITIES}; unset it to read the CPU's flags")
        return forced
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None)
    if flags is None:
        return None
    if "amx_bf16" in flags:
        return "amx"
    return "avx512_bf16" if "avx512_bf16" in flags else "none"


def matmul_gflops(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0) -> float:
    """Best GFLOP/s of an n^3 matmul over ``seconds`` on the CPU (the peak a benchmark is compared with)."""
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        torch.matmul(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


@functools.lru_cache(maxsize=1)
def bf16_probe_speedup() -> float:
    """How much faster bf16 is than fp32 on this CPU, from a short matmul probe (once per process)."""
    import torch

    return matmul_gflops(torch.bfloat16, n=512, seconds=0.05) / matmul_gflops(torch.float32, n=512, seconds=0.05)


def _parse(requested: str | torch.dtype) -> str:
    import torch

    if isinstance(requested, torch.dtype):
        if requested not in (torch.float32, torch.bfloat16, torch.float16):
            raise ConfigError(f"dtype {requested} is not supported; choose one of {DTYPE_CHOICES}")
        return str(requested).removeprefix("torch.")
    name = _ALIASES.get(str(requested), str(requested))
    if name not in DTYPE_CHOICES:
        raise ConfigError(f"unknown dtype {requested!r}; choose one of {DTYPE_CHOICES} (auto picks bf16 where the "
                          "hardware runs it fast)")
    return name


def resolve_precision(requested: str | torch.dtype = "auto", device: str | torch.device | None = None) -> Precision:
    """The dtype for ``requested`` ("auto", "float32", "bfloat16") on ``device`` (default: CPU), with the reason."""
    import torch

    name = _parse(requested)
    if name != "auto":
        return Precision(getattr(torch, name), "asked for")
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, f"auto: {torch.cuda.get_device_name(device)} supports bf16")
        return Precision(torch.float32, f"auto: {torch.cuda.get_device_name(device)} has no bf16 support")
    if device.type != "cpu":
        return Precision(torch.float32, f"auto: fp32 on {device.type} (bf16 is chosen only on CPUs and CUDA GPUs)")
    capability = cpu_capability()
    source = f"{CAPABILITY_ENV}={capability}" if os.environ.get(CAPABILITY_ENV) else "CPU flags"
    if capability == "none":
        return Precision(torch.float32, f"auto: {source} show no AMX or AVX512-BF16 (bf16 would be emulated, slower)")
    speedup = bf16_probe_speedup()
    found = f"{source} show {capability.upper()}" if capability else "CPU flags unreadable"
    if speedup >= PROBE_MIN_SPEEDUP:
        return Precision(torch.bfloat16, f"auto: {found}; probe: bf16 matmul {speedup:.1f}x fp32")
    return Precision(torch.float32, f"auto: {found}, but probe: bf16 matmul only {speedup:.2f}x fp32")
