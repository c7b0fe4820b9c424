"""Closed-loop results as the field reports them: success rate with a Wilson 95 % interval per task,
episode length, inference latency and achieved control rate; JSON, a text table and a bar plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import NormalDist
from typing import Any, Sequence

import numpy as np


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (no continuity correction).

    Unlike the normal approximation it stays inside [0, 1] and is not degenerate at 0/n or n/n,
    which is where small robot evaluations usually land. (Same values as scipy's
    ``binomtest(k, n).proportion_ci(method="wilson")``; the closed form spares a 1-2 s import.)
    """
    if n <= 0:
        return (math.nan, math.nan)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p, z2 = successes / n, z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # exact ends at 0/n and n/n: rounding would otherwise leave the bound a hair above 0 (below 1)
    lo = 0.0 if successes == 0 else max(0.0, center - half)
    hi = 1.0 if successes == n else min(1.0, center + half)
    return lo, hi


def percentiles(values: Sequence[float]) -> dict[str, float | int]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if not v.size:
        return {"n": 0, "p50": math.nan, "p95": math.nan, "mean": math.nan, "max": math.nan}
    return {"n": int(v.size), "p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)),
            "mean": float(v.mean()), "max": float(v.max())}


def _rate_block(episodes: list[dict], stages: Sequence[str] = ()) -> dict[str, Any]:
    n = len(episodes)
    k = sum(bool(e["success"]) for e in episodes)
    lengths = [e["length"] for e in episodes]
    ok = [e["length"] for e in episodes if e["success"]]
    lo, hi = wilson_interval(k, n)
    block = {
        "episodes": n, "successes": k, "success_rate": k / n if n else math.nan, "ci95": [lo, hi],
        "mean_length": float(np.mean(lengths)) if lengths else math.nan,
        "mean_length_success": float(np.mean(ok)) if ok else None,
        "diverged": sum(bool(e.get("diverged")) for e in episodes),
    }
    if stages:  # episodes that reached each milestone (a success reaches all of them)
        reached = [sum(e["stage"] >= i for e in episodes) for i in range(1, len(stages) + 1)]
        block["stages"] = {name: {"episodes": r, "rate": r / n if n else math.nan, "ci95": list(wilson_interval(r, n))}
                           for name, r in zip(stages, reached)}
    return block


def format_stages(block: dict) -> str:
    """``touched 3/10 · lifted 1/10`` for a task block with stages, else ``-``."""
    stages = block.get("stages") or {}
    return " · ".join(f"{name} {s['episodes']}/{block['episodes']}" for name, s in stages.items()) or "-"


def summarize(episodes: list[dict], tasks: list[str], control_hz: float, stages: Sequence[str] = ()) -> dict[str, Any]:
    """Per-task and overall success, lengths, latency and control-rate figures from episode dicts.

    ``stages`` names the simulator's milestones; each episode dict then carries ``stage``, how many it reached.
    """
    per_task = {t: _rate_block([e for e in episodes if e["task"] == t], stages) for t in tasks}
    steps = sum(e["length"] for e in episodes)
    loop_s = sum(e["wall_s"] for e in episodes)
    policy_s = sum(e["policy_s"] for e in episodes)
    achieved = steps / loop_s if loop_s > 0 else math.nan
    calls = sum(e["policy_calls"] for e in episodes)
    timing = {
        "latency_ms": percentiles([x for e in episodes for x in e["latencies_ms"]]),
        "server_model_ms": percentiles([x for e in episodes for x in e.get("model_ms", [])]),
        "achieved_hz": achieved,
        "control_hz": control_hz,
        "realtime_factor": achieved / control_hz if control_hz else math.nan,
        "steps": steps,
        "policy_calls": calls,
        "steps_per_call": steps / calls if calls else math.nan,
        "loop_s": loop_s,
        "policy_fraction": policy_s / loop_s if loop_s > 0 else math.nan,
        "stale_skipped": sum(e.get("stale_skipped", 0) for e in episodes),
        "starved_steps": sum(e.get("starved_steps", 0) for e in episodes),
    }
    return {"tasks": per_task, "overall": _rate_block(episodes), "timing": timing}


def json_safe(x: Any) -> Any:
    """NaN -> None so the JSON is standard (json.dumps would write the non-standard NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return json_safe(x.item())
    return x


def write_json(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")
    return path


def _f(x: Any, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def format_table(report: dict) -> str:
    """The readable summary printed by ``vla eval``."""
    rows = [("task", "success", "95% CI (Wilson)", "n", "mean len", "len|success")]
    for name, b in [*report["tasks"].items(), ("OVERALL", report["overall"])]:
        rows.append((name, _f(b["success_rate"], ".1%"), f"[{_f(b['ci95'][0], '.2f')}, {_f(b['ci95'][1], '.2f')}]",
                     str(b["episodes"]), _f(b["mean_length"], ".1f"), _f(b["mean_length_success"], ".1f")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    staged = [f"stages:   {name}: {format_stages(b)} (episodes that reached each milestone)"
              for name, b in report["tasks"].items() if b.get("stages")]
    lines += ["", *staged] if staged else []
    if report.get("perturbation"):
        pt = report["perturbation"]
        lines += ["", f"perturbation: {pt['factor']} at level {pt['level']:g}: {pt['summary']} (drawn per episode seed)"]
    t, p = report["timing"], report["policy"]
    lat = t["latency_ms"]
    where = {"server": f"round trip to {p.get('url')}", "model": "in-process", "expert": "scripted expert"}[p["source"]]
    lines += [
        "",
        f"policy:   {p.get('model_id') or p['source']} ({where}), embodiment {p['embodiment']}, "
        f"k={p['actions_per_chunk']} of H={p['chunk_size']} actions per chunk"
        + (", prefetch" if p.get("prefetch") else "") + (", realtime" if p.get("realtime") else "")
        + (f", temporal ensembling m={p['ensemble_m']}" if p.get("ensemble_m") is not None else ""),
        f"latency:  p50 {_f(lat['p50'], '.1f')} ms, p95 {_f(lat['p95'], '.1f')} ms per chunk ({lat['n']} calls"
        + (f"; server model p50 {_f(t['server_model_ms']['p50'], '.1f')} ms" if t["server_model_ms"]["n"] else "") + ")",
        f"control:  {_f(t['achieved_hz'], '.1f')} steps/s achieved in the closed loop vs {_f(t['control_hz'], '.4g')} Hz "
        f"embodiment rate ({_f(t['realtime_factor'], '.2f')}x real time; {_f(100 * t['policy_fraction'], '.0f')}% of "
        "loop time in the policy)",
        report["seeds"]["summary"],
    ]
    for w in report.get("warnings", []):
        lines.append(f"WARNING: {w}")
    return "\n".join(lines)


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write (creating the folder) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def bar_plot(report: dict, path: str | Path) -> Path:
    """Success rate per task (and overall) with Wilson 95 % error bars, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = [*report["tasks"].items()] + ([("overall", report["overall"])] if len(report["tasks"]) > 1 else [])
    names = [n for n, _ in blocks]
    rates = np.array([b["success_rate"] for _, b in blocks], dtype=float)
    lo = np.array([b["ci95"][0] for _, b in blocks], dtype=float)
    hi = np.array([b["ci95"][1] for _, b in blocks], dtype=float)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(blocks) + 1.5), 3.6), dpi=100)
    colors = ["tab:blue"] * len(report["tasks"]) + (["tab:gray"] if len(blocks) > len(report["tasks"]) else [])
    x = np.arange(len(blocks))
    yerr = np.clip(np.vstack([rates - lo, hi - rates]), 0.0, None)
    ax.bar(x, rates, color=colors, yerr=yerr, capsize=5, ecolor="black")
    for i, (_, b) in enumerate(blocks):
        ax.text(i, min(1.02, hi[i] + 0.02), f"{b['successes']}/{b['episodes']}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, names, rotation=30 if len(blocks) > 3 else 0, ha="right" if len(blocks) > 3 else "center")
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("success rate (95% Wilson CI)")
    p = report["policy"]
    ax.set_title(f"{report['env']}: {p.get('model_id') or p['source']}"[:80], fontsize=9)
    return save_figure(fig, path)
