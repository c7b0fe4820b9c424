"""A suite of closed-loop evaluations (several ``vla eval`` runs, e.g. one per simulator) as one table.

The suite's headline is the mean of the per-task success rates, as multi-task benchmarks report it;
the pooled Wilson interval over all episodes comes with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import VLAError
from .report import _f, _rate_block, bar_plot, format_stages, write_json


def load_results(paths: Sequence[str | Path]) -> list[dict]:
    """Closed-loop reports from ``results.json`` files (or the directories holding them)."""
    reports = []
    for p in map(Path, paths):
        f = p / "results.json" if p.is_dir() else p
        try:
            report = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise VLAError(f"{f}: not a readable results.json ({e}); pass the --out directory of a `vla eval` run") from e
        if report.get("kind") != "vla.eval/closed_loop":
            raise VLAError(f"{f} is not a closed-loop `vla eval` report (kind={report.get('kind')!r})")
        reports.append(report)
    if not reports:
        raise VLAError("no results given: pass the results.json files (or --out directories) of `vla eval` runs")
    return reports


def summarize_suite(reports: Sequence[dict]) -> dict[str, Any]:
    """Per-task rows across simulators, the mean success over tasks and the timing of each run."""
    rows, episodes = [], []
    for r in reports:
        for task, block in r["tasks"].items():
            rows.append({"env": r["env"], "task": task, "embodiment": r["policy"]["embodiment"], **block})
        episodes += r["episodes"]
    mean = float(np.mean([row["success_rate"] for row in rows]))
    runs = [{"env": r["env"], "embodiment": r["policy"]["embodiment"], "source": r["policy"]["source"],
             "url": r["policy"].get("url"), "actions_per_chunk": r["policy"]["actions_per_chunk"],
             "chunk_size": r["policy"]["chunk_size"], "seeds": r["seeds"]["summary"],
             "latency_ms_p50": r["timing"]["latency_ms"]["p50"], "achieved_hz": r["timing"]["achieved_hz"],
             "control_hz": r["timing"]["control_hz"]} for r in reports]
    return {"kind": "vla.eval/suite", "tasks": rows, "mean_task_success": mean, "pooled": _rate_block(episodes),
            "runs": runs, "model_id": reports[0]["policy"].get("model_id")}


def format_suite_markdown(suite: dict) -> str:
    """Markdown tables for a README or model card."""
    lines = ["| simulator | task | success | 95% CI (Wilson) | episodes | mean length | stages reached |",
             "|---|---|---|---|---|---|---|"]
    for row in suite["tasks"]:
        lines.append(f"| {row['env']} ({row['embodiment']}) | {row['task']} | {_f(row['success_rate'], '.0%')} | "
                     f"[{_f(row['ci95'][0], '.2f')}, {_f(row['ci95'][1], '.2f')}] | {row['episodes']} | "
                     f"{_f(row['mean_length'], '.0f')} | {format_stages(row)} |")
    pooled = suite["pooled"]
    lines.append(f"| **suite** | mean over {len(suite['tasks'])} tasks | **{_f(suite['mean_task_success'], '.1%')}** | "
                 f"[{_f(pooled['ci95'][0], '.2f')}, {_f(pooled['ci95'][1], '.2f')}] pooled | {pooled['episodes']} | "
                 f"{_f(pooled['mean_length'], '.0f')} | |")
    lines += ["", "| simulator | policy path | k of H | latency p50 | achieved control rate | embodiment rate |",
              "|---|---|---|---|---|---|"]
    for run in suite["runs"]:
        path = f"HTTP {run['url']}" if run["source"] == "server" else run["source"]
        lines.append(f"| {run['env']} | {path} | {run['actions_per_chunk']} of {run['chunk_size']} | "
                     f"{_f(run['latency_ms_p50'], '.0f')} ms | {_f(run['achieved_hz'], '.1f')} steps/s | "
                     f"{_f(run['control_hz'], 'g')} Hz |")
    lines += [""] + [f"- {run['env']}: {run['seeds']}" for run in suite["runs"]]
    return "\n".join(lines)


def write_suite(suite: dict, out_dir: str | Path) -> dict[str, str]:
    """suite.json, suite.md and suite.png (success per task with CI bars) in ``out_dir``."""
    out = Path(out_dir)
    files = {"json": str(write_json(suite, out / "suite.json"))}
    (out / "suite.md").write_text(format_suite_markdown(suite) + "\n")
    files["markdown"] = str(out / "suite.md")
    as_report = {"env": "suite", "policy": {"source": "suite", "model_id": suite.get("model_id")},
                 "tasks": {f"{row['env']}/{row['task']}": row for row in suite["tasks"]},
                 "overall": {**suite["pooled"], "success_rate": suite["mean_task_success"]}}
    files["plot"] = str(bar_plot(as_report, out / "suite.png"))
    return files
