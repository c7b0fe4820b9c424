"""MCAP (ROS 2 bag) recordings -> LeRobot dataset, with a report per source episode.

Each ``.mcap`` file or bag folder is one episode unless the mapping names an episode topic.
Nothing is dropped silently: gaps that cut or drop episodes (``on_gap``), episodes too short
to keep and damaged recordings are all listed in the report. The dataset's provenance records
every source file with its SHA-256, the mapping (as given and its hash) and the licence, which
the model card of a policy trained on it then shows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import ConfigError, DatasetError
from ..conversion import ConversionReport
from ..lerobot import LeRobotWriter
from .episodes import Episode, EpisodeReader
from .mapping import McapMapping
from .source import McapFile, Recording, find_recordings


@dataclass
class McapReport(ConversionReport):
    """The conversion report plus one line per source episode and the measured stream timing."""

    episodes: list[str] = field(default_factory=list)
    timing: dict[str, dict[str, str]] = field(default_factory=dict)  # source episode -> topic -> stats

    def __str__(self) -> str:
        lines = [super().__str__(), "source episodes:"] + [f"  {e}" for e in self.episodes]
        if self.timing:
            lines.append("measured timing per topic (within each source episode):")
            for ep, topics in self.timing.items():
                lines.append(f"  {ep}:")
                lines += [f"    {t}: {s}" for t, s in topics.items()]
        return "\n".join(lines)


def _names(reader: EpisodeReader, m: McapMapping) -> tuple[list[str], list[str]]:
    state = reader.names("state", len(m.state))
    action = state if m.action is None else reader.names("action", len(m.action))
    for what, names, key in (("state", state, "state"), ("action", action, "action")):
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"mapping {m.name}: {what} names {dup} occur twice (two topics give the same names). "
                              f"Fix: set 'names: [...]' on the {key} entries")
    return action, state


def convert_mcap(
    srcs: list[str | Path],
    out: str | Path,
    *,
    mapping: "str | Path | dict | McapMapping",
    to: str = "lerobot-v3.0",
    version: str = "v3.0",
    codec: str = "h264",
    license: str | None = None,
    skip_bad: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> McapReport:
    """Convert MCAP files / ROS 2 bag folders into a LeRobot dataset at ``out`` (see module docstring).

    skip_bad: report damaged recordings and bad episodes and keep the good ones, instead of stopping.
    license: the recordings' licence, recorded in the dataset (default "unknown", which the model card flags).
    """
    m = McapMapping.resolve(mapping)
    recs = find_recordings(list(srcs))
    out = Path(out)
    report = McapReport(out=out, source=f"MCAP: {len(recs)} recording(s) (mapping {m.name})", target=to)
    if not license:
        report.notes.append("no --license given: the dataset's licence is 'unknown' (model cards will warn)")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc=f"MCAP -> {to}", unit="msg", unit_scale=True, total=_message_total(recs, m))
    reader = EpisodeReader(m, on_message=bar.update if bar is not None else None)
    writer: LeRobotWriter | None = None
    sources: list[dict] = []
    n_source = 0

    def write(ep: Episode) -> int:
        nonlocal writer
        if writer is None:
            action_names, state_names = _names(reader, m)
            writer = LeRobotWriter(
                out, fps=m.fps, robot_type=m.robot_type, action_names=action_names, state_names=state_names,
                cameras={k: v.shape[1:3] for k, v in ep.images.items()}, version=version, codec=codec,
                license=license or "unknown", provenance=_provenance(srcs, m, len(recs), sources), overwrite=overwrite)
        return writer.add_episode(ep.actions, ep.states, ep.images, ep.task)

    def bad(label: str, e: DatasetError) -> None:
        nonlocal n_source
        if not skip_bad:
            raise e
        report.skipped[n_source] = f"{label}: {e}"
        report.episodes.append(f"{label}: SKIPPED ({e})")
        n_source += 1

    try:
        for rec in recs:
            entry = {"recording": rec.name, "files": [{"file": f, "sha256": h} for f, h in rec.sha256().items()],
                     "episodes": []}
            sources.append(entry)
            part = -1
            try:
                for raw in reader.episodes(rec):
                    part = raw.part
                    try:
                        res = reader.align(raw)
                        written = [(write(ep), ep) for ep in res.episodes]
                    except DatasetError as e:
                        bad(raw.label, e)
                        continue
                    report.notes += res.notes
                    report.timing[res.label] = {t: str(s) for t, s in res.stats.items()}
                    for i, ep in written:
                        entry["episodes"].append(i)
                        report.episodes.append(f"{ep.label} ({ep.span_s[0]:.2f}-{ep.span_s[1]:.2f} s) -> episode {i}, "
                                               f"{len(ep.actions)} frames, task {ep.task!r}")
                        report.episodes_written += 1
                        report.frames_written += len(ep.actions)
                    report.episodes += [f"{d}" for d in res.dropped]
                    n_source += 1
            except DatasetError as e:
                label = rec.name if part < 0 and not m.episode_topic else f"{rec.name} episode {part + 1}"
                bad(f"{label} and the rest of the recording" if m.episode_topic else label, e)
            lead = reader.skipped_before_marker.pop(rec.name, None)
            if lead is not None:
                report.notes.append(f"{rec.name}: {lead:.2f} s before the first episode marker are not an episode; left out")
        if writer is None:
            raise DatasetError(f"no episode could be converted from {len(recs)} recording(s):\n"
                               + "\n".join(f"  {e}" for e in report.episodes or ["(none)"]))
        writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    return report


def _message_total(recs: list[Recording], m: McapMapping) -> int | None:
    """Messages on the mapped topics, from the files' summaries (None if a file has none)."""
    total = 0
    for rec in recs:
        for p in rec.files:
            with McapFile(p) as f:
                if not f.indexed:
                    return None
                total += sum(c.count or 0 for t, c in f.channels().items() if t in m.topics())
    return total


def _provenance(srcs: list[str | Path], m: McapMapping, n: int, sources: list[dict]) -> dict:
    # ``sources`` is filled as the conversion goes; the writer serialises it at close().
    return {
        "source_format": "mcap",
        "mapping": m.name,
        "mapping_sha256": hashlib.sha256(m.source_text.encode()).hexdigest(),
        "converted_from": ", ".join(str(Path(s)) for s in srcs),
        "recordings": n,
        "mapping_text": m.source_text,
        "source_files": sources,
    }


__all__ = ["convert_mcap", "McapReport", "Recording"]
