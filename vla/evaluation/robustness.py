"""Robustness suite (THE COLOSSEUM's way): the same seeds nominal and under each perturbation factor,
success per factor with a Wilson 95 % interval and the gap to nominal with its own interval.

A difference is called a gap only when the 95 % interval of the difference (Newcombe's hybrid score
interval, built from the two Wilson intervals) excludes zero; otherwise it is "within noise".
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError
from .report import _f, save_figure, wilson_interval, write_json


def parse_perturbations(items: Sequence[str]) -> list[tuple[str, float]]:
    """``["light", "camera=2", "all"]`` -> [(factor, level), ...]; ``all`` = every factor at level 1."""
    from ..sim.randomization import FACTORS, parse_perturbation

    out: list[tuple[str, float]] = []
    for item in items:
        out += [(f, 1.0) for f in FACTORS] if item.strip().lower() == "all" else [parse_perturbation(item)]
    if not out:
        raise ConfigError("--perturb needs at least one FACTOR[=LEVEL] (or 'all'); factors: " + ", ".join(FACTORS))
    if len(set(out)) != len(out):
        raise ConfigError(f"perturbations listed twice: {[f'{f}={lv:g}' for f, lv in out]}")
    return out


def difference_interval(k1: int, n1: int, k0: int, n0: int) -> tuple[float, float]:
    """95 % interval of p1 - p0 (Newcombe 1998, method 10: hybrid Wilson score, no continuity correction)."""
    p1, p0 = k1 / n1, k0 / n0
    l1, u1 = wilson_interval(k1, n1)
    l0, u0 = wilson_interval(k0, n0)
    d = p1 - p0
    return d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)


def _row(name: str, report: dict, nominal: dict | None) -> dict[str, Any]:
    o = report["overall"]
    row = {"condition": name, "factor": (report.get("perturbation") or {}).get("factor"),
           "level": (report.get("perturbation") or {}).get("level"), "summary": (report.get("perturbation") or {}).get("summary"),
           "successes": o["successes"], "episodes": o["episodes"], "success_rate": o["success_rate"], "ci95": o["ci95"],
           "stages": {t: b.get("stages") for t, b in report["tasks"].items() if b.get("stages")}}
    if nominal is not None:
        n = nominal["overall"]
        lo, hi = difference_interval(o["successes"], o["episodes"], n["successes"], n["episodes"])
        row.update({"gap": o["success_rate"] - n["success_rate"], "gap_ci95": [lo, hi],
                    "verdict": "within noise" if lo <= 0 <= hi else ("gap (worse)" if hi < 0 else "gap (better)")})
    return row


def run_robustness(env: str, tasks: list[str] | None, episodes: int, seed_start: int, source, *,
                   perturbations: Sequence[str], out_dir: str | Path, progress: bool = False,
                   **evaluate_kwargs) -> dict[str, Any]:
    """Evaluate nominal, then each perturbation on the same seeds; write robustness.{json,md,png} to ``out_dir``.

    ``evaluate_kwargs`` go to :func:`vla.evaluation.closed_loop.evaluate` (server or in-process alike).
    Each condition's full report is in ``out_dir/<condition>/results.json``.
    """
    from .closed_loop import evaluate

    factors = parse_perturbations(perturbations)  # fail on a bad name before running anything
    out = Path(out_dir)
    record_dir = evaluate_kwargs.pop("record_dir", None)
    reports = {}
    for factor, level in [(None, 1.0), *factors]:
        name = "nominal" if factor is None else factor if level == 1.0 else f"{factor}={level:g}"
        folder = name.replace("=", "_")  # one folder per condition, for results and videos alike
        reports[name] = evaluate(env, tasks, episodes, seed_start, source, perturb=factor and (factor, level),
                                 out_dir=str(out / folder), record_dir=record_dir and str(Path(record_dir) / folder),
                                 progress=progress, **evaluate_kwargs)
    nominal = reports["nominal"]
    rows = [_row(name, r, None if name == "nominal" else nominal) for name, r in reports.items()]
    report = {"kind": "vla.eval/robustness", "env": env, "tasks": nominal["tasks_evaluated"],
              "policy": nominal["policy"], "seeds": nominal["seeds"]["summary"], "episodes_per_task": episodes,
              "seed_start": seed_start, "rows": rows, "warnings": sorted({w for r in reports.values() for w in r["warnings"]})}
    report["files"] = {"json": str(write_json(report, out / "robustness.json"))}
    (out / "robustness.md").write_text(format_robustness(report) + "\n")
    report["files"]["markdown"] = str(out / "robustness.md")
    report["files"]["plot"] = str(robustness_plot(report, out / "robustness.png"))
    return report


def format_robustness(report: dict) -> str:
    """Markdown table: success per condition, Wilson interval, gap to nominal with its interval, verdict."""
    p = report["policy"]
    lines = [f"{report['env']} ({', '.join(report['tasks'])}), {report['episodes_per_task']} seeds per task from "
             f"{report['seed_start']}; policy {p.get('model_id') or p['source']} ({p['source']})", "",
             "| condition | success | 95% CI (Wilson) | gap to nominal | 95% CI of gap | verdict |",
             "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        gap = "-" if "gap" not in r else f"{100 * r['gap']:+.0f} pts"
        gap_ci = "-" if "gap_ci95" not in r else f"[{100 * r['gap_ci95'][0]:+.0f}, {100 * r['gap_ci95'][1]:+.0f}]"
        lines.append(f"| {r['condition']} | {r['successes']}/{r['episodes']} ({_f(r['success_rate'], '.0%')}) | "
                     f"[{_f(r['ci95'][0], '.2f')}, {_f(r['ci95'][1], '.2f')}] | {gap} | {gap_ci} | {r.get('verdict', 'reference')} |")
    lines += ["", "A gap is claimed only where its 95% interval (Newcombe, from the two Wilson intervals) excludes 0."]
    lines += [f"- {r['condition']}: {r['summary']}" for r in report["rows"] if r.get("summary")]
    lines += [f"WARNING: {w}" for w in report.get("warnings", [])]
    return "\n".join(lines)


def robustness_plot(report: dict, path: str | Path) -> Path:
    """Success per condition with Wilson error bars; the nominal rate as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    rates = np.array([r["success_rate"] for r in rows], dtype=float)
    lo = np.array([r["ci95"][0] for r in rows], dtype=float)
    hi = np.array([r["ci95"][1] for r in rows], dtype=float)
    colors = ["tab:gray"] + ["tab:red" if r.get("verdict", "").startswith("gap (worse") else "tab:blue" for r in rows[1:]]
    fig, ax = plt.subplots(figsize=(max(4.5, 0.8 * len(rows) + 1.5), 3.6), dpi=100)
    x = np.arange(len(rows))
    ax.bar(x, rates, color=colors, yerr=np.clip(np.vstack([rates - lo, hi - rates]), 0, None), capsize=4, ecolor="black")
    ax.axhline(rates[0], color="tab:gray", linestyle="--", linewidth=1)
    for i, r in enumerate(rows):
        ax.text(i, min(1.02, hi[i] + 0.02), f"{r['successes']}/{r['episodes']}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [r["condition"] for r in rows], rotation=35, ha="right")
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("success (95% Wilson CI)")
    ax.set_title(f"{report['env']} robustness: red = gap to nominal outside noise", fontsize=9)
    return save_figure(fig, path)


__all__ = ["difference_interval", "format_robustness", "parse_perturbations", "robustness_plot", "run_robustness"]
