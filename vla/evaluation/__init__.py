"""Evaluation in simulation: closed-loop success rates (``vla eval``), open-loop action errors on
held-out data, and train/serve parity. Imports are lazy: ``import vla.evaluation`` stays cheap."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "evaluate": "closed_loop",
    "EvalPlan": "closed_loop",
    "EpisodeRunner": "closed_loop",
    "PolicySource": "policies",
    "EvaluationError": "policies",
    "SeedOverlapError": "seeds",
    "check_seeds": "seeds",
    "collect_training_seeds": "seeds",
    "wilson_interval": "report",
    "format_table": "report",
    "bar_plot": "report",
    "open_loop_eval": "open_loop",
    "parity_check": "open_loop",
    "make_tiny_env_checkpoint": "testing",
    "summarize_suite": "suite",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
