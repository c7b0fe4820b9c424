"""A ROS 2 robot recording in MCAP, written with ``mcap-ros2-support``'s writer, whose content
says exactly when each message was taken (for tests, benchmarks and examples).

Topics (rates configurable):

- ``/cam_front/image_raw``: ``sensor_msgs/Image``, bgr8 by default. Upper half grey at
  ``frame_level(i)``, lower half pure red.
- ``/cam_wrist/image_raw/compressed``: ``sensor_msgs/CompressedImage`` JPEG. Upper half grey
  at ``frame_level(i)``, lower half pure blue.
- ``/joint_states``: ``sensor_msgs/JointState`` naming [gripper, j2, j0, j1] (not the mapping's
  order); position of jk = i + k/4, gripper = -1.
- ``/arm_command``: ``std_msgs/Float64MultiArray`` [1000 + i, 1000.25 + i, 1000.5 + i].
- ``/episode_start``: ``std_msgs/String`` at each ``markers`` time, holding the instruction.

Message i of a stream is stamped ``t0 + offset + i / rate`` (header.stamp); the recorder's log
time adds a per-stream transport latency, so aligning on log time would pick other messages.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..resample import NS
from .ros2_msgs import msgdef, schema_name

T0 = 1_700_000_000 * NS
JOINTS = ["gripper", "j2", "j0", "j1"]
FRONT, WRIST, JOINT_STATES, COMMAND, MARKER = (
    "/cam_front/image_raw", "/cam_wrist/image_raw/compressed", "/joint_states", "/arm_command", "/episode_start")


def frame_level(i: int) -> int:
    """Grey level of frame i's upper half: 16 levels 15 apart survive lossy video coding."""
    return 15 + 15 * (i % 16)


@dataclass
class BagSpec:
    seconds: float = 3.0
    rates: dict[str, float] = field(default_factory=lambda: {
        FRONT: 30.0, WRIST: 15.0, JOINT_STATES: 50.0, COMMAND: 20.0})
    offsets_s: dict[str, float] = field(default_factory=lambda: {  # first header stamp after T0
        FRONT: 0.004, WRIST: 0.012, JOINT_STATES: 0.001, COMMAND: 0.02})
    latency_s: dict[str, float] = field(default_factory=lambda: {  # log time - header stamp
        FRONT: 0.03, WRIST: 0.045, JOINT_STATES: 0.002, COMMAND: 0.001})
    size: tuple[int, int] = (32, 48)  # (H, W)
    front_encoding: str = "bgr8"
    row_padding: int = 0  # bytes after each row of the front camera (step > width x pixel size)
    markers: list[tuple[float, str]] = field(default_factory=list)  # (seconds, instruction) on /episode_start
    silent: dict[str, tuple[float, float]] = field(default_factory=dict)  # topic -> [from, to) s without messages
    zero_stamps: tuple[str, ...] = ()  # topics whose header.stamp is left unset
    chunk_size: int = 64 * 1024
    noise: bool = False  # random pixels (realistic compression cost) instead of flat halves


def _image(i: int, h: int, w: int, colour: tuple[int, int, int], rng: np.random.Generator | None) -> np.ndarray:
    img = np.empty((h, w, 3), np.uint8)
    img[: h // 2] = frame_level(i)
    img[h // 2:] = colour
    if rng is not None:
        img[: h // 2] = rng.integers(0, 256, (h // 2, w, 3), dtype=np.uint8)
    return img


def stamps(spec: BagSpec, topic: str) -> tuple[np.ndarray, np.ndarray]:
    """Header stamps (ns) of every message index of ``topic``, and which of them are written (not silent)."""
    n = int(spec.seconds * spec.rates[topic])
    t = T0 + np.round((spec.offsets_s[topic] + np.arange(n) / spec.rates[topic]) * NS).astype(np.int64)
    lo, hi = spec.silent.get(topic, (np.inf, np.inf))
    return t, ~(((t - T0) / NS >= lo) & ((t - T0) / NS < hi))


def write_robot_bag(path: str | Path, spec: BagSpec | None = None) -> Path:
    """Write the recording described in the module docstring; returns ``path``."""
    from mcap_ros2.writer import Writer
    from PIL import Image

    spec = spec or BagSpec()
    h, w = spec.size
    rng = np.random.default_rng(0) if spec.noise else None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    events: list[tuple[int, str, int, int]] = []  # (log time, topic, index, stamp)
    for topic in spec.rates:
        t, keep = stamps(spec, topic)
        lat = int(spec.latency_s.get(topic, 0.0) * NS)
        events += [(int(s) + lat, topic, i, int(s)) for i, (s, k) in enumerate(zip(t, keep)) if k]
    events += [(T0 + int(s * NS), MARKER, j, T0 + int(s * NS)) for j, (s, _) in enumerate(spec.markers)]
    events.sort()
    jpeg_cache: dict[int, bytes] = {}
    with open(path, "wb") as f:
        wr = Writer(f, chunk_size=spec.chunk_size)
        types = {FRONT: "sensor_msgs/Image", WRIST: "sensor_msgs/CompressedImage", JOINT_STATES: "sensor_msgs/JointState",
                 COMMAND: "std_msgs/Float64MultiArray", MARKER: "std_msgs/String"}
        schemas = {t: wr.register_msgdef(schema_name(ty), msgdef(ty)) for t, ty in types.items()}
        for log, topic, i, stamp in events:
            st = 0 if topic in spec.zero_stamps else stamp
            header = {"stamp": {"sec": st // NS, "nanosec": st % NS}, "frame_id": topic.strip("/").split("/")[0]}
            if topic == FRONT:
                rgb = _image(i, h, w, (255, 0, 0), rng)
                enc = spec.front_encoding
                px = {"bgr8": rgb[..., ::-1], "rgb8": rgb, "mono8": rgb[..., :1]}.get(enc, rgb)
                rows = np.ascontiguousarray(px).reshape(h, -1)
                rows = np.pad(rows, ((0, 0), (0, spec.row_padding)), constant_values=7)
                msg = {"header": header, "height": h, "width": w, "encoding": enc, "is_bigendian": 0,
                       "step": rows.shape[1], "data": rows.tobytes()}
            elif topic == WRIST:
                key = i if rng is not None else frame_level(i)
                if key not in jpeg_cache or rng is not None:
                    buf = io.BytesIO()
                    Image.fromarray(_image(i, h, w, (0, 0, 255), rng)).save(buf, "JPEG", quality=95)
                    jpeg_cache = {key: buf.getvalue()}
                msg = {"header": header, "format": "rgb8; jpeg compressed bgr8", "data": jpeg_cache[key]}
            elif topic == JOINT_STATES:
                pos = {"gripper": -1.0, "j0": float(i), "j1": i + 0.25, "j2": i + 0.5}
                msg = {"header": header, "name": JOINTS, "position": [pos[j] for j in JOINTS],
                       "velocity": [0.0] * 4, "effort": []}
            elif topic == COMMAND:
                msg = {"layout": {"dim": [], "data_offset": 0}, "data": [1000.0 + i, 1000.25 + i, 1000.5 + i]}
            else:
                msg = {"data": spec.markers[i][1]}
            wr.write_message(topic, schemas[topic], msg, log_time=log, publish_time=log)
        wr.finish()
    return path


def robot_mapping(**overrides) -> dict:
    """The mapping of ``write_robot_bag``'s recording (10 Hz clock), with top-level overrides."""
    m = {
        "fps": 10, "robot_type": "test_arm", "instruction": "pick up the cube", "max_staleness": 0.2,
        "cameras": {"front": {"topic": FRONT}, "wrist": {"topic": WRIST}},
        "state": [{"topic": JOINT_STATES, "joints": ["j0", "j1", "j2"]}],
        "action": [{"topic": COMMAND, "names": ["a0", "a1", "a2"]}],
    }
    m.update(overrides)
    return m


__all__ = ["BagSpec", "write_robot_bag", "robot_mapping", "stamps", "frame_level", "T0",
           "FRONT", "WRIST", "JOINT_STATES", "COMMAND", "MARKER"]
