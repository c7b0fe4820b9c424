"""`vla data inspect-mcap`: topics, types, rates and durations of a recording, and a starter mapping."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ...errors import DatasetError
from ..resample import NS
from .episodes import IMAGE_TYPES
from .source import McapFile, TruncatedRecording, find_recordings
from .ros_fields import VECTOR_TYPES

_COMMAND = re.compile(r"cmd|command|action|target|goal|leader|teleop", re.I)
_MARKER = re.compile(r"episode|marker|reset|start", re.I)


def _detail(msg_type: str, msg: Any) -> dict:
    if msg_type == "sensor_msgs/Image":
        return {"encoding": msg.encoding, "size": f"{msg.width}x{msg.height}"}
    if msg_type == "sensor_msgs/CompressedImage":
        return {"format": msg.format}
    if msg_type == "sensor_msgs/JointState":
        return {"joints": list(msg.name)}
    if msg_type.endswith("MultiArray"):
        return {"length": len(msg.data)}
    if msg_type == "std_msgs/String":
        return {"first": str(msg.data)[:60]}
    return {}


def inspect_mcap(path: str | Path) -> dict:
    """Per topic: type, messages, rate, duration, largest gap (from log times) and what the first message holds."""
    recs = find_recordings([path])
    out: dict[str, Any] = {"recordings": [], "topics": {}}
    times: dict[str, list[int]] = {}
    for rec in recs:
        out["recordings"].append(rec.name)
        for p in rec.files:
            with McapFile(p) as f:
                try:
                    for topic, msg_type, schema, message in f.messages():
                        times.setdefault(topic, []).append(message.log_time)
                        t = out["topics"].setdefault(topic, {"type": msg_type})
                        if "detail" not in t:
                            try:
                                t["detail"] = _detail(msg_type, f.decode(schema, message))
                            except DatasetError as e:
                                t["detail"] = {"undecodable": str(e)}
                except TruncatedRecording as e:
                    out.setdefault("damaged", []).append(str(e))
    for topic, ts in times.items():
        t = np.sort(np.asarray(ts, np.int64))
        span = (t[-1] - t[0]) / NS
        out["topics"][topic].update(messages=len(t), duration_s=round(float(span), 3),
                                    rate_hz=round(float((len(t) - 1) / span), 2) if span > 0 else 0.0,
                                    max_gap_s=round(float(np.diff(t).max()) / NS, 4) if len(t) > 1 else 0.0)
    all_t = [x for ts in times.values() for x in ts]
    out["duration_s"] = round(float(max(all_t) - min(all_t)) / NS, 3) if all_t else 0.0
    out["starter_mapping"] = starter_mapping(out["topics"])
    return out


def starter_mapping(topics: dict[str, dict]) -> str:
    """A mapping to edit: cameras from image topics, state from joint states, action from command-like topics."""
    cams = {t: d for t, d in topics.items() if d["type"] in IMAGE_TYPES}
    vecs = {t: d for t, d in topics.items() if d["type"] in VECTOR_TYPES}
    states = [t for t, d in vecs.items() if d["type"] == "sensor_msgs/JointState" and not _COMMAND.search(t)]
    actions = [t for t in vecs if _COMMAND.search(t)]
    markers = [t for t in topics if _MARKER.search(t) and t not in cams and t not in vecs]
    slowest = min([d.get("rate_hz") or 10.0 for d in cams.values()] or [10.0])
    fps = max(1, min(30, round(slowest)))
    rates = [d.get("rate_hz") or fps for t, d in topics.items() if t in cams or t in states or t in actions]
    staleness = round(float(max(2.5 / min(rates), 1.5 / fps)), 3) if rates else 0.2

    def entry(t: str) -> dict:
        d = vecs[t]
        e: dict[str, Any] = {"topic": t}
        if d["type"] == "sensor_msgs/JointState":
            e["joints"] = d.get("detail", {}).get("joints", ["TODO"])
        return e

    m: dict[str, Any] = {
        "fps": fps, "robot_type": "TODO_robot", "instruction": "TODO: describe the task",
        "max_staleness": staleness, "on_gap": "cut",
        "cameras": {re.sub(r"\W+", "_", t.strip("/").split("/")[0]) or "camera": {"topic": t} for t in cams},
        "state": [entry(t) for t in states[:1]],
        "action": [entry(t) for t in actions] or "next_state",
    }
    text = ("# Starter mapping written by `vla data inspect-mcap`: check every line (see docs/mcap_mapping.md).\n"
            + yaml.safe_dump(m, sort_keys=False, width=120))
    if markers:
        text += f"# episodes: {{topic: {markers[0]}}}   # uncomment if each message starts a new episode\n"
    return text


def format_inspection(d: dict) -> str:
    lines = [f"recordings: {', '.join(d['recordings'])}   duration: {d['duration_s']:.2f} s", ""]
    rows = [["topic", "type", "msgs", "Hz", "span s", "max gap s", "first message"]]
    for t, x in sorted(d["topics"].items()):
        det = ", ".join(f"{k}={v}" for k, v in x.get("detail", {}).items())
        rows.append([t, x["type"], str(x["messages"]), f"{x['rate_hz']:.2f}", f"{x['duration_s']:.2f}",
                     f"{x['max_gap_s']:.3f}", det[:70]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    for dmg in d.get("damaged", []):
        lines.append(f"\nDAMAGED: {dmg}")
    lines += ["", d["starter_mapping"].rstrip()]
    return "\n".join(lines)


__all__ = ["inspect_mcap", "starter_mapping", "format_inspection"]
