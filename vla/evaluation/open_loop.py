"""Open-loop evaluation on recorded episodes, and train/serve parity.

Open loop: at frames t = 0, s, 2s, ... of held-out episodes the policy predicts a chunk from the
recorded images (and state); it is compared with the recorded actions t .. t+H-1. This says how
well the policy imitates, not whether it succeeds (compounding errors only show in closed loop),
but it needs no simulator and works on real-robot data.

Parity: the same frames through the live server and through VLAPolicy in this process; for the
same checkpoint and a lossless image encoding the difference should be ~0. A larger one means the
server runs another checkpoint, preprocesses differently, or the transport is lossy.
"""

from __future__ import annotations

import datetime
import math
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import ConfigError
from .policies import PolicySource, open_predictor, policy_metadata
from .report import save_figure, write_json
from .seeds import model_training


# ---------------------------------------------------------------------------- episode selection
def held_out_episodes(ds, model_dirs: list[str]) -> tuple[list[int], str]:
    """Episodes of ``ds`` the model did not train on (from its training provenance), and how we know."""
    from ..data.samples import split_episodes

    root = Path(ds.root).resolve()
    prov = ds.provenance
    found_training = False
    for m in model_dirs:
        training = model_training(m) or {}
        datasets = training.get("datasets") or []
        found_training |= bool(datasets)
        for d in datasets:
            same_path = d.get("path") and Path(str(d["path"])).expanduser().resolve() == root
            same_data = bool(prov) and d.get("provenance") == prov
            if not (same_path or same_data):
                continue
            cfg = training.get("config") or {}
            try:
                val_fraction, seed = float(cfg["data"]["val_fraction"]), int(cfg["seed"])
            except (KeyError, TypeError, ValueError):
                raise ConfigError(
                    f"{ds.root} was used to train {m}, but its training config does not record the validation "
                    "split (data.val_fraction, seed); pass the held-out episodes with --episode-index"
                ) from None
            _, val = split_episodes(ds.episode_indices, val_fraction, seed, str(d.get("name", "")))
            if not val:
                raise ConfigError(f"{ds.root} was used to train {m} with no held-out episodes (val_fraction 0): "
                                  "evaluate on a separately generated dataset (other seeds)")
            return val, f"validation split of training dataset {d.get('name')!r} (val_fraction {val_fraction}, seed {seed})"
    if found_training:
        return list(ds.episode_indices), "not in the model's training data: every episode is held out"
    return list(ds.episode_indices), "UNVERIFIED: no training provenance found; episodes may have been trained on"


def _choose_embodiment(meta: dict, ds, embodiment: str | None) -> tuple[str, dict]:
    embs = meta.get("embodiments") or {}
    if embodiment is not None:
        if embodiment not in embs:
            raise ConfigError(f"the policy has no embodiment {embodiment!r}; it knows {sorted(embs)}")
        cands = [embodiment]
    else:
        cands = [n for n, e in embs.items() if list(e["action_names"]) == list(ds.action_names)
                 and all(c in ds.cameras for c in e["cameras"])]
        if len(cands) > 1 and ds.robot_type in cands:
            cands = [ds.robot_type]
    if len(cands) != 1:
        raise ConfigError(
            f"cannot tell which of the policy's embodiments {sorted(embs)} matches {ds.root} (actions "
            f"{ds.action_names}, cameras {list(ds.cameras)}): " + ("none fits" if not cands else f"{cands} all fit")
            + "; name one with --embodiment NAME"
        )
    name = cands[0]
    e = embs[name]
    if list(e["action_names"]) != list(ds.action_names):
        raise ConfigError(f"embodiment {name!r} acts on {e['action_names']}; {ds.root} records {ds.action_names}")
    missing = [c for c in e["cameras"] if c not in ds.cameras]
    if missing:
        raise ConfigError(f"embodiment {name!r} needs cameras {missing}, which {ds.root} lacks (it has {list(ds.cameras)})")
    if meta.get("uses_state") and ds.state_dim != e.get("state_dim"):
        raise ConfigError(f"embodiment {name!r} uses a state of {e.get('state_dim')} values; {ds.root} has {ds.state_dim}")
    return name, e


def recorded_frames(ds, episodes: list[int], stride: int, cameras: list[str], name: str, uses_state: bool
                    ) -> Iterator[tuple[int, np.ndarray, list[dict], Any]]:
    """Per episode: (index, query frames, observations, Episode)."""
    for i in episodes:
        ep = ds.episode(i)
        idx = np.arange(0, ep.length, stride)
        imgs = {c: ds.frames(i, c, idx, ep.timestamps) for c in cameras}
        obs = [{"images": {c: imgs[c][j] for c in cameras}, "instruction": ep.task, "embodiment": name,
                **({"state": ep.states[t]} if uses_state and ep.states is not None else {})}
               for j, t in enumerate(idx)]
        yield i, idx, obs, ep


def _predict(pred, obs: list[dict], batch_size: int) -> tuple[np.ndarray, float]:
    """(n, H, D) predictions and seconds spent."""
    t0 = time.perf_counter()
    out = []
    for b in range(0, len(obs), batch_size):
        out += [np.asarray(c.actions, dtype=np.float64) for c in pred.predict_batch(obs[b:b + batch_size])]
    return np.stack(out), time.perf_counter() - t0


def _select(ds, model_dirs, episodes: int | None, episode_index: list[int] | None) -> tuple[list[int], str]:
    if episode_index:
        bad = [e for e in episode_index if e not in set(ds.episode_indices)]
        if bad:
            raise ConfigError(f"episodes {bad} are not in {ds.root} (it has {len(ds.episode_indices)}: "
                              f"{ds.episode_indices[0]}..{ds.episode_indices[-1]})")
        held, why = held_out_episodes(ds, model_dirs)
        seen = sorted(set(episode_index) - set(held))
        note = "chosen with --episode-index" + (f"; WARNING: {seen} were training episodes" if seen else "")
        return list(episode_index), note
    held, why = held_out_episodes(ds, model_dirs)
    if episodes is not None:
        if episodes < 1:
            raise ConfigError(f"--episodes must be >= 1, got {episodes}")
        held = held[:episodes]
    return held, why


# ---------------------------------------------------------------------------- open loop
def open_loop_eval(data: str, source: PolicySource, *, embodiment: str | None = None, episodes: int | None = None,
                   episode_index: list[int] | None = None, stride: int | None = None, batch_size: int = 8,
                   plot_episodes: int = 3, out_dir: str | None = None) -> dict[str, Any]:
    """Per-dimension L1 of predicted vs recorded actions on held-out episodes (+ PNG plots in ``out_dir``)."""
    from ..data.lerobot import LeRobotDataset

    ds = LeRobotDataset(data)
    meta = policy_metadata(source)
    model_dirs = [source.model] if source.model else []
    if not model_dirs and Path(str(meta.get("model_id", ""))).is_dir():
        model_dirs = [meta["model_id"]]
    name, e = _choose_embodiment(meta, ds, embodiment)
    H, D = int(e["chunk_size"]), int(e["action_dim"])
    stride = H if stride is None else int(stride)
    if stride < 1:
        raise ConfigError(f"--stride must be >= 1, got {stride}")
    eps, why = _select(ds, model_dirs, episodes, episode_index)
    pred = open_predictor(source)
    abs_sum, count = np.zeros((H, D)), np.zeros((H, 1))
    per_episode, traces, seconds, n_frames = [], [], 0.0, 0
    try:
        for i, idx, obs, ep in recorded_frames(ds, eps, stride, list(e["cameras"]), name, bool(meta.get("uses_state"))):
            P, dt = _predict(pred, obs, batch_size)
            seconds += dt
            n_frames += len(idx)
            R = np.full_like(P, np.nan)
            for j, t in enumerate(idx):
                seg = ep.actions[t:t + H]
                R[j, :len(seg)] = seg
            err = np.abs(P - R)
            valid = ~np.isnan(err[..., :1])
            abs_sum += np.nansum(err, axis=0)
            count += valid.sum(0)
            per_episode.append({"episode": int(i), "task": ep.task, "length": int(ep.length), "frames": int(len(idx)),
                                "l1": float(np.nanmean(err)), "l1_first": float(np.mean(err[:, 0]))})
            if len(traces) < plot_episodes:
                traces.append((i, idx, P, ep.actions))
    finally:
        pred.close()
    per_h_dim = abs_sum / np.maximum(count, 1)
    l1_dim = abs_sum.sum(0) / max(count.sum(), 1)
    std = ds.stats["action"].std if "action" in ds.stats else np.full(D, np.nan)
    report = {
        "kind": "vla.eval/open_loop", "format_version": 1,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "data": str(ds.root), "policy": {"source": source.kind, "url": source.url, "model": source.model,
                                         "model_id": meta.get("model_id"), "embodiment": name, "chunk_size": H},
        "episodes": eps, "episodes_note": why, "stride": stride, "frames": n_frames,
        "action_names": list(e["action_names"]),
        "l1_per_dim": l1_dim.tolist(),
        "l1_per_dim_over_std": (l1_dim / np.where(std > 0, std, np.nan)).tolist(),
        "l1_first_action_per_dim": per_h_dim[0].tolist(),
        "l1_per_horizon_step": per_h_dim.mean(1).tolist(),
        "l1_mean": float(l1_dim.mean()),
        "per_episode": per_episode,
        "ms_per_frame": 1e3 * seconds / max(n_frames, 1),
    }
    if out_dir:
        out = Path(out_dir)
        plots = [str(plot_traces(out / f"open_loop_episode{i}.png", idx, P, A, report["action_names"], f"episode {i}"))
                 for i, idx, P, A in traces]
        plots.append(str(plot_l1(out / "open_loop_l1.png", report)))
        report["files"] = {"json": str(out / "open_loop.json"), "plots": plots}
        write_json(report, out / "open_loop.json")
    return report


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_traces(path: Path, idx: np.ndarray, P: np.ndarray, A: np.ndarray, names: list[str], title: str) -> Path:
    """Recorded action per dimension (black) and each predicted chunk from its query frame (orange)."""
    plt = _plt()
    D, H = A.shape[1], P.shape[1]
    fig, axes = plt.subplots(D, 1, figsize=(7, 1.3 * D + 0.6), sharex=True, dpi=90, squeeze=False)
    for d, ax in enumerate(axes[:, 0]):
        ax.plot(np.arange(len(A)), A[:, d], color="black", lw=1.2, label="recorded")
        for j, t in enumerate(idx):
            ax.plot(np.arange(t, t + H), P[j, :, d], color="tab:orange", lw=0.9, alpha=0.8, label="predicted" if j == 0 else None)
            ax.plot([t], [P[j, 0, d]], "o", color="tab:orange", ms=2.5)
        ax.set_ylabel(names[d], fontsize=7, rotation=0, ha="right")
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    axes[0, 0].set_title(f"{title}: recorded vs predicted chunks (dots: query frames)", fontsize=9)
    axes[-1, 0].set_xlabel("frame")
    return save_figure(fig, path)


def plot_l1(path: Path, report: dict) -> Path:
    plt = _plt()
    names, vals = report["action_names"], np.asarray(report["l1_per_dim_over_std"], dtype=float)
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(names) + 1.5), 3.2), dpi=90)
    ax.bar(np.arange(len(names)), np.nan_to_num(vals), color="tab:orange")
    ax.set_xticks(np.arange(len(names)), names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("L1 / action std")
    ax.set_title(f"open-loop L1 per action dimension ({report['frames']} frames)", fontsize=9)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------- parity
def parity_check(data: str, server: PolicySource, model: PolicySource, *, embodiment: str | None = None,
                 episodes: int | None = 2, episode_index: list[int] | None = None, stride: int | None = None,
                 batch_size: int = 8, out_dir: str | None = None) -> dict[str, Any]:
    """Max |server - in-process| over the actions predicted for the same recorded frames."""
    from ..data.lerobot import LeRobotDataset

    if server.kind != "server" or model.kind != "model":
        raise ConfigError("parity compares a server (--server URL) with a checkpoint in-process (--model DIR)")
    ds = LeRobotDataset(data)
    meta_s, meta_m = policy_metadata(server), policy_metadata(model)
    name, e = _choose_embodiment(meta_m, ds, embodiment)
    keys = ("action_names", "chunk_size", "cameras", "control_hz")
    es = (meta_s.get("embodiments") or {}).get(name)
    if es is None or any(es.get(k) != e.get(k) for k in keys):
        raise ConfigError(f"the server's embodiment {name!r} differs from {model.model}'s "
                          f"(server: {es and {k: es.get(k) for k in keys}}, checkpoint: {({k: e.get(k) for k in keys})}): "
                          "it serves another checkpoint")
    stride = int(e["chunk_size"]) if stride is None else int(stride)
    eps = list(episode_index) if episode_index else list(ds.episode_indices)[: episodes or None]
    ps, pm = open_predictor(server), open_predictor(model)
    diffs, frames, same, t_s, t_m = [], 0, 0, 0.0, 0.0
    try:
        for _, idx, obs, _ in recorded_frames(ds, eps, stride, list(e["cameras"]), name, bool(meta_m.get("uses_state"))):
            A, dt_s = _predict(ps, obs, batch_size)
            B, dt_m = _predict(pm, obs, batch_size)
            t_s, t_m = t_s + dt_s, t_m + dt_m
            d = np.abs(A - B)
            diffs.append(d.reshape(len(idx), -1).max(1))
            same += int((d.reshape(len(idx), -1).max(1) == 0).sum())
            frames += len(idx)
    finally:
        ps.close()
        pm.close()
    per_frame = np.concatenate(diffs) if diffs else np.zeros(0)
    report = {
        "kind": "vla.eval/parity", "format_version": 1,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "data": str(ds.root), "server": server.url, "model": model.model, "embodiment": name,
        "server_model_id": meta_s.get("model_id"), "image_encoding": server.encoding,
        "episodes": eps, "stride": stride, "frames": frames,
        "max_abs_diff": float(per_frame.max()) if frames else math.nan,
        "mean_frame_max_abs_diff": float(per_frame.mean()) if frames else math.nan,
        "identical_frames": same,
        "server_ms_per_frame": 1e3 * t_s / max(frames, 1), "inprocess_ms_per_frame": 1e3 * t_m / max(frames, 1),
    }
    if out_dir:
        report["files"] = {"json": str(Path(out_dir) / "parity.json")}
        write_json(report, Path(out_dir) / "parity.json")
    return report


def format_open_loop(report: dict) -> str:
    lines = [f"open loop on {report['data']}: {len(report['episodes'])} episodes ({report['episodes_note']}), "
             f"{report['frames']} query frames every {report['stride']} steps, {report['ms_per_frame']:.1f} ms/frame",
             f"{'action':>16}  {'L1':>9}  {'L1/std':>7}  {'L1 first':>9}"]
    for n, a, b, c in zip(report["action_names"], report["l1_per_dim"], report["l1_per_dim_over_std"],
                          report["l1_first_action_per_dim"]):
        lines.append(f"{n[:16]:>16}  {a:9.4f}  {b if b == b else float('nan'):7.3f}  {c:9.4f}")
    lines.append("L1 per chunk step h=0..H-1: " + " ".join(f"{v:.4f}" for v in report["l1_per_horizon_step"]))
    return "\n".join(lines)


def format_parity(report: dict) -> str:
    verdict = "OK (identical)" if report["max_abs_diff"] == 0 else (
        "OK (float noise)" if report["max_abs_diff"] < 1e-5 else "MISMATCH")
    return (f"parity {report['server']} vs {report['model']} on {report['frames']} frames of {report['data']} "
            f"({report['image_encoding']} images): max |diff| {report['max_abs_diff']:.3g}, "
            f"{report['identical_frames']}/{report['frames']} chunks identical -> {verdict}; "
            f"server {report['server_ms_per_frame']:.1f} ms/frame, in-process {report['inprocess_ms_per_frame']:.1f} ms/frame")
