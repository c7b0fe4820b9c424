"""`vla data info`: a readable (or JSON) summary of a LeRobot or RLDS dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .formats import detect_format

_STAT_COLUMNS = ("mean", "std", "min", "max", "q01", "q99")


def _stats_block(raw: dict[str, np.ndarray], names: list[str]) -> dict[str, Any]:
    return {k: np.asarray(raw[k], np.float64).reshape(-1).tolist() for k in _STAT_COLUMNS if k in raw} | {
        "count": int(np.asarray(raw.get("count", [0])).reshape(-1)[0]),
        "names": names,
    }


def describe_lerobot(path: Path, compute: bool = False) -> dict[str, Any]:
    from .lerobot import ACTION, STATE, LeRobotDataset
    from .stats import compute_stats

    ds = LeRobotDataset(path)
    missing = ds.missing_files()
    d: dict[str, Any] = {
        "path": str(path),
        "format": f"LeRobot {ds.version}",
        "robot_type": ds.robot_type,
        "episodes": ds.num_episodes,
        "episodes_with_files": ds.num_episodes - len(missing),
        "missing_files": sorted(f for fs in missing.values() for f in fs)[:5],
        "missing_episodes": len(missing),
        "frames": ds.num_frames,
        "fps": ds.fps,
        "cameras": {k: {"height": h, "width": w, "codec": ds.camera_codecs.get(k, "?")} for k, (h, w) in ds.cameras.items()},
        "action": {"dim": ds.action_dim, "names": ds.action_names},
        "state": {"dim": ds.state_dim, "names": ds.state_names} if ds.state_dim else None,
        "tasks": {"count": len(ds.tasks), "examples": [ds.tasks[k] for k in sorted(ds.tasks)[:5]]},
        "license": ds.license,
        "provenance": ds.provenance,
        "notes": list(ds.notes),
    }
    raw, src = ds.raw_stats()
    if compute:
        present = [e for e in ds.episode_indices if e not in missing]
        computed = compute_stats(ds, [f for f in (ACTION, STATE) if f == ACTION or ds.state_dim], episodes=present)
        raw = {f: {k: getattr(s, k) for k in _STAT_COLUMNS} | {"count": [s.count]} for f, s in computed.items()}
        src = f"computed (streaming) from the {len(present)} episode(s) with files"
    stats: dict[str, Any] = {"source": src}
    for feat, names in ((ACTION, ds.action_names), (STATE, ds.state_names)):
        if feat in raw:
            stats[feat] = _stats_block(raw[feat], names)
    lacking = [f for f in (ACTION, STATE) if f in stats and not all(k in stats[f] for k in ("q01", "q99"))]
    if lacking:
        d["notes"].append(f"statistics of {lacking} lack q01/q99: `vla data info --compute-stats` computes them")
    d["statistics"] = stats
    d["outcomes"] = _outcomes(ds, [e for e in ds.episode_indices if e not in missing])
    if missing:
        d["notes"].append(
            f"{len(missing)} of {ds.num_episodes} episodes described by the metadata have missing files "
            f"(e.g. {d['missing_files'][0]}); reading them raises an error naming the file"
        )
    ds.close()
    return d


def _outcomes(ds, episodes: list[int]) -> dict[str, Any] | None:
    """Success rate, returns and label sources from the next.* / label_source columns (None without them)."""
    from .outcomes import DONE, LABEL_SOURCE, LABEL_SOURCES, REWARD, SUCCESS

    present = [c for c in (REWARD, SUCCESS, DONE, LABEL_SOURCE) if c in ds.features]
    if not present:
        return None
    succeeded, returns, labels = 0, [], np.zeros(len(LABEL_SOURCES), np.int64)
    for i in episodes:
        o = ds.episode(i).outcomes
        succeeded += bool(SUCCESS in o and o[SUCCESS].any())
        if REWARD in o:
            returns.append(float(o[REWARD].sum()))
        if LABEL_SOURCE in o:
            labels += np.bincount(o[LABEL_SOURCE].astype(np.int64), minlength=len(LABEL_SOURCES))[:len(LABEL_SOURCES)]
    out: dict[str, Any] = {"columns": present, "episodes": len(episodes),
                           "reward_source": ds.provenance.get("reward_source", "not recorded")}
    if SUCCESS in present:
        out["successful_episodes"] = succeeded
        out["success_rate"] = succeeded / max(len(episodes), 1)
    if returns:
        out["mean_return"] = float(np.mean(returns))
    if LABEL_SOURCE in present:
        out["label_sources"] = {name: int(n) for name, n in zip(LABEL_SOURCES, labels) if n}
    return out


def describe_rlds(path: Path, mapping: str | None) -> dict[str, Any]:
    from .rlds import RLDSDataset

    rds = RLDSDataset(path, mapping)
    keys = rds.keys()
    first = next(rds.episodes(), None)
    d: dict[str, Any] = {
        "path": str(path),
        "format": "RLDS (TFRecord)",
        "files": len(rds.files),
        "mapping": rds.mapping.name,
        "robot_type": rds.mapping.robot_type,
        "episodes": len(rds),
        "fps": rds.mapping.fps,
        "keys": keys,
        "license": str(rds.info.get("license", "unknown")),
        "notes": [],
    }
    if first is not None:
        names, note = rds.names(first.actions.shape[1])
        d["cameras"] = {k: {"height": v.shape[1], "width": v.shape[2], "codec": "jpeg/png per step"} for k, v in first.images.items()}
        d["action"] = {"dim": first.actions.shape[1], "names": names}
        if note:
            d["notes"].append(note)
        if first.states is not None:
            snames, note = rds.names(first.states.shape[1], state=True)
            d["state"] = {"dim": first.states.shape[1], "names": snames}
            if note:
                d["notes"].append(note)
        d["first_episode"] = {"steps": first.length, "instruction": first.task}
        if first.outcomes is not None:
            d["notes"].append("reward, is_terminal and is_last become next.reward, next.success and next.done "
                              "when converted")
    d["notes"].append("statistics: convert to LeRobot (`vla data convert`) to compute and store them")
    return d


def describe(path: str | Path, *, mapping: str | None = None, compute_stats: bool = False) -> dict[str, Any]:
    """A JSON-serializable summary of the dataset at ``path`` (LeRobot or RLDS, auto-detected)."""
    p = Path(path)
    return describe_rlds(p, mapping) if detect_format(p) == "rlds" else describe_lerobot(p, compute_stats)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _randomization_lines(r: dict[str, Any], shown: int = 5) -> list[str]:
    """The randomization ranges and the first episodes' sampled scenes (all of them are in the JSON)."""
    from ..sim.randomization import describe as describe_config
    from ..sim.randomization import summarize_scene

    episodes = r.get("episodes") or []
    out = [f"  randomized   {describe_config(r.get('config') or {})}"]
    for e in episodes[:shown]:
        out.append(f"    episode {e['episode_index']} ({e['task']}, seed {e['seed']}): {summarize_scene(e['scene'])}")
    if len(episodes) > shown:
        out.append(f"    ... {len(episodes) - shown} more episodes (--json lists every episode's parameters)")
    return out


def format_summary(d: dict[str, Any]) -> str:
    """Human-readable text for a ``describe`` result."""
    out = [f"{d['path']}", f"  format       {d['format']}" + (f"  (mapping {d['mapping']!r}, {d['files']} file(s))" if "mapping" in d else "")]
    out.append(f"  robot type   {d.get('robot_type', 'unknown')}")
    eps = f"{d['episodes']}"
    if d.get("missing_episodes"):
        eps += f"  ({d['episodes_with_files']} with files, {d['missing_episodes']} missing)"
    out.append(f"  episodes     {eps}")
    if "frames" in d:
        out.append(f"  frames       {d['frames']}")
    out.append(f"  fps          {d['fps']:g}" if d.get("fps") else "  fps          unknown")
    for k, c in (d.get("cameras") or {}).items():
        out.append(f"  camera       {k}: {c['width']}x{c['height']} ({c['codec']})")
    for what in ("action", "state"):
        v = d.get(what)
        if v:
            out.append(f"  {what:<12} {v['dim']}-D: {', '.join(v['names'])}")
    if "tasks" in d:
        ex = "; ".join(repr(t) for t in d["tasks"]["examples"])
        out.append(f"  tasks        {d['tasks']['count']}: {ex}{' ...' if d['tasks']['count'] > 5 else ''}")
    if "first_episode" in d:
        fe = d["first_episode"]
        out.append(f"  episode 0    {fe['steps']} steps, instruction {fe['instruction']!r}")
    out.append(f"  licence      {d.get('license', 'unknown')}")
    prov = d.get("provenance")
    if prov:
        out.append("  provenance   " + ", ".join(f"{k}={v}" for k, v in prov.items() if k != "randomization"))
    if isinstance((prov or {}).get("randomization"), dict):
        out += _randomization_lines(prov["randomization"])
    o = d.get("outcomes")
    if o:
        line = f"  outcomes     reward from {o['reward_source']}"
        if "success_rate" in o:
            line += f"; {o['successful_episodes']}/{o['episodes']} episodes succeed ({o['success_rate']:.0%})"
        if "mean_return" in o:
            line += f"; mean return {o['mean_return']:.3g}"
        out.append(line)
        if o.get("label_sources"):
            out.append("  labels       " + ", ".join(f"{k} {v} frames" for k, v in o["label_sources"].items()))
    st = d.get("statistics")
    if st:
        out.append(f"  statistics   ({st['source']})")
        for feat in ("action", "observation.state"):
            if feat not in st:
                continue
            s = st[feat]
            cols = [c for c in _STAT_COLUMNS if c in s]
            width = max(len(n) for n in s["names"]) if s["names"] else 4
            out.append(f"    {feat} (n={s['count']})")
            out.append("      " + f"{'dim':<{width}}  " + "".join(f"{c:>10}" for c in cols))
            for i, name in enumerate(s["names"]):
                out.append("      " + f"{name:<{width}}  " + "".join(f"{_fmt(s[c][i]):>10}" for c in cols))
    for n in d.get("notes", []):
        out.append(f"  note: {n}")
    if "keys" in d:
        out.append("  keys         " + ", ".join(d["keys"]))
    return "\n".join(out)
