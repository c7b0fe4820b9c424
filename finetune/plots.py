"""PNG plots of a run: training/validation curves and predicted vs recorded action traces (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

CURVES = "training_curves.png"
TRACES = "action_traces.png"
_MAX_DIMS = 4  # action dims plotted per episode


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless; never opens a window
    import matplotlib.pyplot as plt

    return plt


def plot_curves(records: list[dict[str, Any]], out: Path) -> Path:
    """Training loss (and lr) plus validation loss, token accuracy and L1 per embodiment, against step."""
    plt = _pyplot()
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    if train:
        steps = [r["step"] for r in train]
        ax.plot(steps, [r["loss"] for r in train], label="train", lw=1)
    for emb in sorted({r["embodiment"] for r in val}):
        rows = [r for r in val if r["embodiment"] == emb]
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r["loss"] for r in rows], "o-", label=f"val {emb}", ms=3)
        axes[1].plot(steps, [r["token_accuracy"] for r in rows], "o-", label=emb, ms=3)
        axes[2].plot(steps, [r["l1_normalized"] for r in rows], "o-", label=emb, ms=3)
    ax.set(title="action-token cross-entropy", xlabel="step", ylabel="loss")
    ax.set_yscale("log")
    axes[1].set(title="validation token accuracy", xlabel="step", ylim=(0, 1))
    axes[2].set(title="validation L1 of decoded actions (normalized units)", xlabel="step")
    if train:
        twin = axes[0].twinx()
        twin.plot([r["step"] for r in train], [r["lr"] for r in train], color="grey", alpha=0.4, lw=1)
        twin.set_ylabel("learning rate", color="grey")
    for a in axes:
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_traces(traces: list[dict[str, Any]], out: Path) -> Path | None:
    """One row per validation episode, one column per action dim (first few): recorded vs predicted."""
    if not traces:
        return None
    plt = _pyplot()
    cols = min(_MAX_DIMS, max(len(t["action_names"]) for t in traces))
    fig, axes = plt.subplots(len(traces), cols, figsize=(3.6 * cols, 2.6 * len(traces)), squeeze=False)
    for row, t in zip(axes, traces):
        steps = np.arange(len(t["truth"]))
        for d, ax in enumerate(row):
            if d >= len(t["action_names"]):
                ax.axis("off")
                continue
            ax.plot(steps, t["truth"][:, d], label="recorded", lw=1.5)
            ax.plot(steps, t["pred"][:, d], "--", label="predicted", lw=1.2)
            for s in range(0, len(steps), t["chunk_size"]):
                ax.axvline(s, color="grey", alpha=0.15, lw=0.8)
            ax.set_title(f"{t['embodiment']} ep {t['episode']}: {t['action_names'][d]}", fontsize=9)
            ax.tick_params(labelsize=7)
        row[0].legend(fontsize=7)
    fig.suptitle("validation episodes: a chunk predicted every H steps (grey lines) vs the recorded actions",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
