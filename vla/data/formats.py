"""Dataset formats: which one a directory holds (`detect_format`), and conversion between them: RLDS -> LeRobot,
MCAP (ROS 2 bags) -> LeRobot, and LeRobot v2.1 <-> v3.0.

Frames are decoded and re-encoded (small GOP, so the result has fast random
access whatever the source GOP was). Nothing is dropped silently: episodes that
cannot be converted either stop the conversion (default) or, with
``skip_bad=True``, are counted in the returned report with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from ..errors import ConfigError, DatasetError
from .conversion import ConversionReport
from .lerobot import LeRobotDataset, LeRobotWriter
from .rlds import RLDSDataset, RLDSMapping
from .outcomes import COLUMNS as OUTCOME_COLUMNS
from .outcomes import Outcomes

TARGETS = {"lerobot-v3.0": "v3.0", "lerobot-v2.1": "v2.1"}


def detect_format(path: str | Path) -> str:
    """'lerobot' (meta/info.json), 'rlds' (*.tfrecord* files) or 'mcap' (.mcap files, ROS 2 bag folders)."""
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"cannot tell the format of {p}: it does not exist. Point at the dataset root")
    if (p / "meta" / "info.json").exists():
        return "lerobot"
    if p.is_file() and ".tfrecord" in p.name or p.is_dir() and any(".tfrecord" in q.name for q in p.rglob("*")):
        return "rlds"
    if p.suffix == ".mcap" or p.is_dir() and any(p.rglob("*.mcap")):
        return "mcap"
    raise DatasetError(
        f"cannot tell the format of {p}: no meta/info.json (LeRobot), no *.tfrecord* files (RLDS), no .mcap files. "
        "Point at the dataset root"
    )


def _progress(it: Iterable, total: int | None, desc: str, enabled: bool) -> Iterable:
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc=desc, unit="ep")


def _codec(requested: str | None, source: str | None) -> str:
    if requested:
        return requested
    return source if source in ("h264", "av1") else "h264"


def convert(
    src: "str | Path | list[str | Path]",
    out: str | Path,
    *,
    to: str = "lerobot-v3.0",
    source_format: str | None = None,
    mapping: "str | dict | RLDSMapping | None" = None,
    codec: str | None = None,
    episodes: list[int] | None = None,
    skip_bad: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    license: str | None = None,
) -> ConversionReport:
    """Convert ``src`` (LeRobot v2.x/v3.0, RLDS, or MCAP files / ROS 2 bag folders) into a LeRobot dataset at ``out``.

    codec: output video codec ("h264"/"av1"); default: the source's (H.264 for RLDS).
    episodes: source episodes to convert (LeRobot sources); default all.
    skip_bad: skip (and report) episodes with missing/corrupt files or bad values instead of failing.
    license: MCAP only: the recordings' licence (other formats carry their own).
    """
    if to not in TARGETS:
        raise ConfigError(f"unknown target {to!r}; choose one of {sorted(TARGETS)}")
    srcs = list(src) if isinstance(src, (list, tuple)) else [src]
    fmt = source_format or detect_format(srcs[0])
    if fmt == "mcap":
        from .mcap.convert import convert_mcap

        if mapping is None:
            raise ConfigError("MCAP needs a mapping file (--mapping robot.yaml) saying which topics are the cameras, "
                              "state and action; `vla data inspect-mcap FILE` prints a starter")
        if episodes is not None:
            raise ConfigError("--episodes selects LeRobot episodes; for MCAP pass only the recordings to convert")
        return convert_mcap(srcs, out, mapping=mapping, to=to, version=TARGETS[to], codec=_codec(codec, None),
                            license=license, skip_bad=skip_bad, overwrite=overwrite, progress=progress)
    if len(srcs) != 1:
        raise ConfigError(f"{fmt} conversion takes one source directory, got {len(srcs)}")
    if license is not None:
        raise ConfigError(f"--license only applies to MCAP sources; {fmt} datasets carry their own licence")
    src = srcs[0]
    if fmt == "rlds":
        return _from_rlds(Path(src), Path(out), TARGETS[to], to, mapping, codec, skip_bad, overwrite, progress)
    if fmt == "lerobot":
        if mapping is not None:
            raise ConfigError("--mapping only applies to RLDS sources")
        return _from_lerobot(Path(src), Path(out), TARGETS[to], to, codec, episodes, skip_bad, overwrite, progress)
    raise ConfigError(f"unknown source format {fmt!r}; choose 'lerobot', 'rlds' or 'mcap'")


def _from_lerobot(src, out, version, target, codec, episodes, skip_bad, overwrite, progress) -> ConversionReport:
    ds = LeRobotDataset(src)
    report = ConversionReport(out=out, source=f"LeRobot {ds.version} at {src}", target=target)
    report.notes += ds.notes
    codecs = set(ds.camera_codecs.values())
    chosen = _codec(codec, next(iter(codecs)) if len(codecs) == 1 else None)
    odd = {k: hw for k, hw in ds.cameras.items() if hw[0] % 2 or hw[1] % 2}
    if odd:
        raise DatasetError(f"cameras {odd} have odd sizes, which yuv420p video cannot store; resize them first")
    eps = ds.episode_indices if episodes is None else list(episodes)
    prov = {"converted_from": str(src), "source_format": f"lerobot-{ds.version}"}
    if ds.provenance:
        prov["source_provenance"] = ds.provenance
    keep_outcomes = all(c in ds.features for c in OUTCOME_COLUMNS)
    writer = LeRobotWriter(
        out, fps=ds.fps, robot_type=ds.robot_type, action_names=ds.action_names, state_names=ds.state_names,
        cameras=ds.cameras, version=version, codec=chosen, license=ds.license, provenance=prov,
        outcomes=keep_outcomes, overwrite=overwrite,
    )
    with writer:
        for i in _progress(eps, len(eps), f"{src.name} -> {target}", progress):
            try:
                ep = ds.episode(i)
                images = {cam: ds.frames(i, cam, range(ep.length), timestamps=ep.timestamps) for cam in ds.cameras}
            except DatasetError as e:
                if not skip_bad:
                    raise
                report.skipped[i] = str(e)
                continue
            if len(ep.tasks) > 1:
                report.notes.append(f"episode {i} has {len(ep.tasks)} tasks; kept the first ({ep.task!r})")
            outcomes = Outcomes(*(ep.outcomes[c] for c in OUTCOME_COLUMNS)) if keep_outcomes else None
            writer.add_episode(ep.actions, ep.states, images, ep.task or "unknown task", outcomes=outcomes)
            report.episodes_written += 1
            report.frames_written += ep.length
        if report.episodes_written == 0:
            raise DatasetError(f"no episode of {src} could be converted: {report.skipped}")
        kept = [i for i in eps if i not in report.skipped]
        if kept != list(range(len(kept))):
            # LeRobot needs episode indices 0..n-1: record where each one came from.
            writer.provenance["source_episode_indices"] = kept
            report.notes.append(f"episodes renumbered 0..{len(kept) - 1}; info.json provenance lists the source indices")
    ds.close()
    return report


def _from_rlds(src, out, version, target, mapping, codec, skip_bad, overwrite, progress) -> ConversionReport:
    rds = RLDSDataset(src, mapping)
    m = rds.mapping
    if not m.fps:
        raise ConfigError(f"RLDS mapping {m.name!r} has no 'fps': LeRobot needs the control rate; add \"fps\": <Hz>")
    report = ConversionReport(out=out, source=f"RLDS at {src} (mapping {m.name!r})", target=target)
    it: Iterator = rds.episodes(skipped=report.skipped if skip_bad else None)
    first = next(it, None)
    if first is None:
        raise DatasetError(f"{src} holds no readable episodes: {report.skipped or 'empty'}")
    cams = {k: v.shape[1:3] for k, v in first.images.items()}
    odd = {k: hw for k, hw in cams.items() if hw[0] % 2 or hw[1] % 2}
    if odd:
        raise DatasetError(f"cameras {odd} have odd sizes, which yuv420p video cannot store; resize them first")
    action_names, note = rds.names(first.actions.shape[1])
    report.notes += [note] if note else []
    state_names: list[str] = []
    if first.states is not None:
        state_names, note = rds.names(first.states.shape[1], state=True)
        report.notes += [note] if note else []
    prov = {"converted_from": str(src), "source_format": "rlds", "rlds_mapping": m.name}
    writer = LeRobotWriter(
        out, fps=m.fps, robot_type=m.robot_type, action_names=action_names, state_names=state_names,
        cameras=cams, version=version, codec=_codec(codec, None), license=str(rds.info.get("license", "unknown")),
        provenance={**prov, **({"reward_source": "dataset"} if first.outcomes is not None else {})},
        outcomes=first.outcomes is not None, overwrite=overwrite,
    )

    def episodes():
        yield first
        yield from it

    with writer:
        for ep in _progress(episodes(), None, f"{src.name} -> {target}", progress):
            try:
                writer.add_episode(ep.actions, ep.states, ep.images, ep.task, outcomes=ep.outcomes)
            except DatasetError as e:
                if not skip_bad:
                    raise
                report.skipped[ep.index] = str(e)
                continue
            report.episodes_written += 1
            report.frames_written += ep.length
    return report


__all__ = ["convert", "ConversionReport", "detect_format", "TARGETS"]
