"""Episodes out of MCAP recordings: collect the mapped topics, cut at episode markers,
resample onto the control clock, decode only the frames the ticks use.

One pass over each file in log-time order. Per episode, vectors are extracted as messages
arrive and images are kept encoded; after alignment only the held frames are decoded (a
30 Hz camera on a 10 Hz clock decodes a third of its frames).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from ...errors import DatasetError
from ..resample import NS, Alignment, StreamStats, align
from .mapping import CameraSpec, McapMapping, VectorSpec
from .source import McapFile, Recording
from .ros_fields import VectorReader
from .ros_images import compressed_msg_to_rgb, image_msg_to_rgb

IMAGE_TYPES = ("sensor_msgs/Image", "sensor_msgs/CompressedImage")
_CLOCK_TOLERANCE_S = 5.0  # header stamps further than this from the recorder's clock: another clock


@dataclass
class _Stream:
    key: str
    spec: CameraSpec | VectorSpec
    type: str = ""
    stamps: list[int] = field(default_factory=list)
    logs: list[int] = field(default_factory=list)
    payload: list[Any] = field(default_factory=list)
    reader: VectorReader | None = None


@dataclass
class RawEpisode:
    """The mapped messages of one episode, before alignment."""

    recording: str
    part: int  # episode number within the recording
    start_log: int  # ns: marker (or first message) log time
    streams: dict[str, _Stream]
    instruction: str | None
    file: str

    @property
    def label(self) -> str:
        return f"{self.recording} episode {self.part}"


@dataclass
class Episode:
    """An aligned episode, ready for the LeRobot writer."""

    label: str
    actions: np.ndarray
    states: np.ndarray | None
    images: dict[str, np.ndarray]
    task: str
    span_s: tuple[float, float]  # seconds from the recording's first tick (for reports)


@dataclass
class EpisodeResult:
    """What became of one source episode: kept segments, and what was dropped and why."""

    label: str
    episodes: list[Episode] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    stats: dict[str, StreamStats] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _stamp_ns(msg: Any) -> int | None:
    header = getattr(msg, "header", None)
    if header is None:
        return None
    return int(header.stamp.sec) * NS + int(header.stamp.nanosec)


class EpisodeReader:
    """Reads ``RawEpisode``s of recordings with a mapping (the same readers across recordings,
    so array names stay consistent)."""

    def __init__(self, mapping: McapMapping, on_message: Callable[[int], None] | None = None):
        self.m = mapping
        self.on_message = on_message
        self.vector_readers: dict[str, VectorReader] = {}
        self.skipped_before_marker: dict[str, float] = {}
        self._executor: ThreadPoolExecutor | None = None

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1))
        return self._executor

    # -- checks ------------------------------------------------------------------------------
    def required_topics(self) -> set[str]:
        """The mapping's topics; an instruction topic may be absent where a default instruction exists."""
        has_default = bool(self.m.instruction or self.m.instructions)
        return {t for t in self.m.topics() if t != self.m.instruction_topic or not has_default}

    def check_topics(self, rec: Recording, files: list[McapFile]) -> None:
        """Missing topics, from the summaries (an unfinished file is checked as it is read)."""
        present: dict[str, str] = {}
        for f in files:
            if not f.indexed:
                return
            present.update({t: c.type for t, c in f.channels().items()})
        missing = sorted(self.required_topics() - set(present))
        if missing:
            import difflib

            hints = [f"{t} (did you mean {c[0]}?)" if (c := difflib.get_close_matches(t, list(present), n=1)) else t
                     for t in missing]
            raise DatasetError(f"{rec.name}: topic(s) {', '.join(hints)} named in mapping {self.m.name} are not in the "
                               f"recording. Its topics: {sorted(present)}. Fix the mapping's topic names "
                               "(`vla data inspect-mcap` lists them)")

    def _check_type(self, s: _Stream, msg_type: str, where: str) -> None:
        if isinstance(s.spec, CameraSpec):
            if msg_type not in IMAGE_TYPES:
                raise DatasetError(f"{where}: the topic is {msg_type}, but camera {s.key} needs "
                                   f"{' or '.join(IMAGE_TYPES)}. Fix: point the camera at an image topic")
        else:
            reader = self.vector_readers.get(s.key)
            if reader is None:
                reader = self.vector_readers[s.key] = VectorReader(s.spec, msg_type, where)
            elif reader.type != msg_type:
                raise DatasetError(f"{where}: topic {s.spec.topic} is {msg_type} here but {reader.type} in an earlier "
                                   "recording; map recordings of one robot setup together")
            s.reader = reader
        s.type = msg_type

    # -- reading -----------------------------------------------------------------------------
    def _new(self, rec: Recording, part: int, start_log: int, file: str, instruction: str | None) -> RawEpisode:
        streams = {k: _Stream(k, spec) for k, spec in self.m.streams().items()}
        return RawEpisode(rec.name, part, start_log, streams, instruction, file)

    def episodes(self, rec: Recording) -> Iterator[RawEpisode]:
        """Every episode of the recording in time order. A damaged file raises (``TruncatedRecording``)
        after the complete episodes before the damage were yielded."""
        files = [McapFile(p) for p in rec.files]
        try:
            self.check_topics(rec, files)
            yield from self._episodes(rec, files)
        finally:
            for f in files:
                f.close()

    def _episodes(self, rec: Recording, files: list[McapFile]) -> Iterator[RawEpisode]:
        m = self.m
        by_topic: dict[str, list[str]] = {}
        for k, spec in m.streams().items():
            by_topic.setdefault(spec.topic, []).append(k)
        marker, period = m.episode_topic, NS / m.fps
        ep: RawEpisode | None = None if marker else self._new(rec, 0, 0, rec.files[0].name, None)
        last_marker, parts, seen = -math.inf, 0, set()
        instructions: list[tuple[int, str]] = []  # (log time, text) of the instruction topic
        before = (math.inf, -math.inf)
        count = 0
        for f in files:
            for topic, msg_type, schema, message in f.messages(m.topics()):
                count += 1
                if self.on_message and count % 512 == 0:
                    self.on_message(512)
                where = f"{f.path.name} topic {topic}"
                seen.add(topic)
                if topic == m.instruction_topic:
                    if msg_type != "std_msgs/String":
                        raise DatasetError(f"{where}: instruction_topic must be std_msgs/String, it is {msg_type}. "
                                           "Fix 'instruction_topic' in the mapping")
                    instructions.append((message.log_time, str(f.decode(schema, message).data).strip()))
                if topic == marker:
                    # Only the time counts (a service event need not even decode). A service call is up
                    # to four events (request/response, client/server) within milliseconds: markers
                    # closer than one tick are one boundary.
                    if message.log_time - last_marker >= period:
                        if ep is not None:
                            yield self._finish(ep, instructions)
                        ep = self._new(rec, parts, message.log_time, f.path.name, None)
                        parts += 1
                    last_marker = message.log_time
                    continue
                if topic not in by_topic:
                    continue
                if ep is None:  # before the first episode marker
                    before = (min(before[0], message.log_time), max(before[1], message.log_time))
                    continue
                msg = f.decode(schema, message)
                for key in by_topic[topic]:
                    self._add(ep.streams[key], msg_type, msg, message.log_time, where)
        if self.on_message:
            self.on_message(count % 512)
        if before[0] < math.inf:
            self.skipped_before_marker[rec.name] = (before[1] - before[0]) / NS
        if ep is not None:
            unseen = sorted(self.required_topics() - seen)
            if unseen:
                raise DatasetError(f"{rec.name}: topic(s) {unseen} of mapping {m.name} never appear in the recording. "
                                   "Fix the mapping's topic names (`vla data inspect-mcap` lists the topics)")
            yield self._finish(ep, instructions)
        elif marker:
            raise DatasetError(f"{rec.name}: no message on the episode topic {marker}, so no episode starts. Fix: "
                               "remove 'episodes' from the mapping (one episode per file) or name the right topic")

    def _add(self, s: _Stream, msg_type: str, msg: Any, log_ns: int, where: str) -> None:
        if not s.type:
            self._check_type(s, msg_type, where)
        want = self.m.stamp_of(s.spec)
        stamp = _stamp_ns(msg) if want == "header" else log_ns
        if stamp is None:
            if s.spec.stamp == "header":
                raise DatasetError(f"{where}: {msg_type} has no header, so 'stamp: header' cannot apply. "
                                   "Fix: set 'stamp: log' on this stream")
            stamp = log_ns  # headerless types are stamped by the recorder
        elif stamp == 0 and want == "header":
            raise DatasetError(f"{where}: header.stamp is zero (the publisher never set it). Fix: set 'stamp: log' "
                               "on this stream in the mapping, or fix the publisher")
        s.stamps.append(stamp)
        s.logs.append(log_ns)
        s.payload.append(msg if s.reader is None else s.reader(msg))

    def _finish(self, ep: RawEpisode, instructions: list[tuple[int, str]]) -> RawEpisode:
        starts = [s.logs[0] for s in ep.streams.values() if s.logs]
        first = min(starts) if starts else ep.start_log
        if self.m.instruction_topic:
            before = [t for lt, t in instructions if lt <= first and t]
            inside = [t for lt, t in instructions if lt > first and t]
            ep.instruction = before[-1] if before else (inside[0] if inside else None)
        return ep

    # -- alignment ---------------------------------------------------------------------------
    def align(self, ep: RawEpisode) -> EpisodeResult:
        """Resample onto the control clock and cut/drop at gaps; every dropped tick is reported."""
        m, res = self.m, EpisodeResult(ep.label)
        empty = [s.spec.topic for s in ep.streams.values() if not s.stamps]
        if empty:
            res.dropped.append(f"{ep.label}: no message on {sorted(set(empty))} in this episode")
            return res
        stamps: dict[str, np.ndarray] = {}
        for k, s in ep.streams.items():
            t = np.asarray(s.stamps, np.int64)
            order = np.argsort(t, kind="stable")
            if np.any(order != np.arange(len(t))):  # header stamps need not arrive in order
                s.payload = [s.payload[i] for i in order]
                t, s.logs = t[order], list(np.asarray(s.logs)[order])
            if m.stamp_of(s.spec) == "header":
                off = float(np.median(np.asarray(s.logs, np.int64) - t)) / NS
                if abs(off) > _CLOCK_TOLERANCE_S:
                    raise DatasetError(
                        f"{ep.file} topic {s.spec.topic}: header stamps are {off:+.1f} s away from the recorder's "
                        "clock (simulated time or an unsynchronised robot clock), so they cannot be aligned with the "
                        "other streams. Fix: set 'stamp: log' on this stream (or 'stamp: log' for the whole mapping)")
            stamps[k] = t
        task = ep.instruction or m.instructions.get(ep.recording) or m.instruction
        if not task:
            raise DatasetError(f"{ep.label}: no instruction. Fix: set 'instruction: <text>' (default), "
                               f"'instructions: {{{ep.recording}: <text>}}' or 'instruction_topic' in the mapping")
        start = max(int(t[0]) for t in stamps.values())
        end = max(int(t[-1]) for t in stamps.values())
        t0 = min(int(t[0]) for t in stamps.values())
        if (start - t0) / NS > 1.0 / m.fps:
            topic = next(ep.streams[k].spec.topic for k, t in stamps.items() if int(t[0]) == start)
            res.notes.append(f"{ep.label}: the first {(start - t0) / NS:.2f} s were left out: {topic} starts last")
        staleness = {k: m.staleness_s(s.spec) for k, s in ep.streams.items()}
        al = align(stamps, start, end, m.fps, staleness)
        res.stats = {ep.streams[k].spec.topic + ("" if k.startswith("observation.") else f" ({k})"): v
                     for k, v in al.stats.items()}
        min_ticks = max(2 + (m.action is None), math.ceil(m.min_episode_s * m.fps))
        keep, short = al.segments(min_ticks)
        gaps = int((~al.fresh).sum())
        span = lambda a, b: (float(al.ticks[a] - start) / NS, float(al.ticks[b - 1] - start) / NS)  # noqa: E731
        if gaps:
            stale = {ep.streams[k].spec.topic: st.stale_ticks for k, st in al.stats.items() if st.stale_ticks}
            why = (f"{gaps} of {len(al.ticks)} ticks have a stream older than its max_staleness "
                   f"({', '.join(f'{t}: {n} ticks' for t, n in stale.items())})")
            if m.on_gap == "drop":
                res.dropped.append(f"{ep.label}: dropped (on_gap: drop): {why}")
                return res
            res.notes.append(f"{ep.label}: cut at gaps: {why}")
        for a, b in short:
            res.dropped.append(f"{ep.label}: {b - a} tick(s) at {span(a, b)[0]:.2f}-{span(a, b)[1]:.2f} s between "
                               f"gaps are shorter than min_episode_s={m.min_episode_s:g}; dropped")
        for i, (a, b) in enumerate(keep):
            label = ep.label if len(keep) == 1 else f"{ep.label} segment {i}"
            res.episodes.append(self._build(ep, al, a, b, task, label, span(a, b)))
        return res

    def _build(self, ep: RawEpisode, al: Alignment, a: int, b: int, task: str, label: str,
               span: tuple[float, float]) -> Episode:
        m = self.m
        images = {}
        for key, spec in m.cameras.items():
            s = ep.streams[key]
            idx = al.index[key][a:b]
            convert = image_msg_to_rgb if s.type == "sensor_msgs/Image" else compressed_msg_to_rgb
            held = np.unique(idx).tolist()
            where = f"{ep.file} topic {spec.topic}"
            # JPEG/PNG decoding and pixel copies release the GIL: decode the held frames in threads
            frames = dict(zip(held, self._pool().map(lambda i: convert(s.payload[i], spec, where), held)))
            shapes = {f.shape for f in frames.values()}
            if len(shapes) > 1:
                raise DatasetError(f"{ep.file} topic {spec.topic}: the image size changes within {label} "
                                   f"({sorted(shapes)}); record one resolution per camera")
            h, w = next(iter(shapes))[:2]
            if h % 2 or w % 2:
                raise DatasetError(f"{ep.file} topic {spec.topic}: images are {h}x{w}; video (yuv420p) needs even "
                                   "sizes. Fix: publish an even size (crop or resize on the robot)")
            images[key] = np.stack([frames[i] for i in idx.tolist()])

        def vectors(prefix: str, n: int, lo: int, hi: int) -> np.ndarray:
            cols = []
            for j in range(n):
                s = ep.streams[f"{prefix}[{j}]"]
                vals = np.asarray(s.payload, np.float32)
                cols.append(vals[al.index[s.key][lo:hi]])
            return np.concatenate(cols, axis=1)

        states = vectors("state", len(m.state), a, b) if m.state else None
        if m.action is None:  # action = next state: the last tick has none
            actions = states[1:]
            states = states[:-1]
            images = {k: v[:-1] for k, v in images.items()}
        else:
            actions = vectors("action", len(m.action), a, b)
        return Episode(label, actions, states, images, task, span)

    def names(self, prefix: str, n: int) -> list[str]:
        return [name for j in range(n) for name in (self.vector_readers[f"{prefix}[{j}]"].names or [])]


__all__ = ["EpisodeReader", "RawEpisode", "Episode", "EpisodeResult"]
