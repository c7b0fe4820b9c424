"""The mapping file of an MCAP (ROS 2 bag) conversion: which topic is what.

YAML (or JSON), e.g.::

    fps: 10                      # control rate: every stream is resampled onto this clock
    robot_type: so101
    instruction: pick up the cube        # default instruction of every episode
    max_staleness: 0.2           # s; a stream whose latest message is older at a tick is a gap
    on_gap: cut                  # cut the episode at a gap, or drop the whole episode
    cameras:
      front: {topic: /cam_front/image_raw}             # -> observation.images.front
      wrist: {topic: /cam_wrist/image_raw/compressed}
    state:
      - {topic: /joint_states, joints: [shoulder, elbow, wrist, gripper]}
    action:
      - {topic: /arm_controller/command, names: [shoulder, elbow, wrist, gripper]}

See docs/mcap_mapping.md for every key.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ...errors import ConfigError, check_keys

STAMPS = ("header", "log")


@dataclass
class CameraSpec:
    """One camera: a ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage`` topic."""

    key: str  # LeRobot feature, e.g. observation.images.front
    topic: str
    stamp: str | None = None  # "header" (capture time) or "log" (arrival); default: the mapping's
    max_staleness: float | None = None
    encoding: str | None = None  # read the pixels as this encoding (for the ambiguous 8UC3 / 8UC4)
    depth_range: list[float] | None = None  # [near, far] metres: 16-bit / float depth -> 8-bit grey


@dataclass
class VectorSpec:
    """Part of the state or action: selected numbers of one topic."""

    topic: str
    joints: list[str] | None = None  # sensor_msgs/JointState: joints by name, in this order
    field: str = "position"  # JointState: position | velocity | effort
    components: list[str] | None = None  # geometry types: subset, e.g. [x, y, z]
    indices: list[int] | None = None  # float arrays: subset of data[]
    names: list[str] | None = None  # feature names (default: joint or component names)
    stamp: str | None = None
    max_staleness: float | None = None


@dataclass
class McapMapping:
    fps: float
    cameras: dict[str, CameraSpec]
    state: list[VectorSpec]
    action: list[VectorSpec] | None  # None: the action is the next state ("action: next_state")
    robot_type: str = "unknown"
    instruction: str | None = None
    instructions: dict[str, str] = field(default_factory=dict)  # recording name -> instruction
    instruction_topic: str | None = None  # std_msgs/String
    episode_topic: str | None = None  # every message (or service call) starts a new episode
    max_staleness: float = 0.2
    on_gap: str = "cut"
    min_episode_s: float = 1.0
    stamp: str = "header"
    name: str = "inline"
    source_text: str = ""  # the mapping as given (recorded in the dataset's provenance)

    # -- parsing -----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any], name: str = "inline", text: str = "") -> "McapMapping":
        where = f"MCAP mapping {name}"
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: expected a mapping of keys (fps, cameras, state, action, ...), "
                              f"got {type(d).__name__}")
        top = ["fps", "robot_type", "instruction", "instructions", "instruction_topic", "episodes", "max_staleness",
               "on_gap", "min_episode_s", "stamp", "cameras", "state", "action"]
        check_keys(d, top, where)
        placeholders = [k for k in ("robot_type", "instruction") if "TODO" in str(d.get(k, ""))]
        if placeholders:  # a starter mapping from `vla data inspect-mcap`, not filled in yet
            raise ConfigError(f"{where}: {placeholders} still hold the starter mapping's TODO placeholder; "
                              "write the robot type and the task instruction (or per-file 'instructions')")
        for key in ("fps", "cameras", "action"):
            if key not in d:
                raise ConfigError(f"{where}: missing {key!r}. " + {
                    "fps": "Add the control rate, e.g. 'fps: 10'",
                    "cameras": "Add at least one camera, e.g. 'cameras: {front: {topic: /camera/image_raw}}'",
                    "action": "Add 'action: [{topic: /command, ...}]' or 'action: next_state'",
                }[key])
        fps = _positive(d["fps"], "fps", where)
        if not isinstance(d["cameras"], dict) or not d["cameras"]:
            raise ConfigError(f"{where}: 'cameras' must map camera names to {{topic: ...}}; got {d['cameras']!r}")
        cameras = {}
        for cam, spec in d["cameras"].items():
            key = cam if cam.startswith("observation.images.") else f"observation.images.{cam}"
            spec = {"topic": spec} if isinstance(spec, str) else spec
            cameras[key] = _spec(CameraSpec, spec, f"{where} camera {cam!r}", key=key)
        state = [_spec(VectorSpec, s, f"{where} state[{i}]")
                 for i, s in enumerate(_list(d.get("state", []), "state", where))]
        action: list[VectorSpec] | None
        if d["action"] == "next_state":
            if not state:
                raise ConfigError(f"{where}: 'action: next_state' needs a 'state'")
            action = None
        else:
            action = [_spec(VectorSpec, s, f"{where} action[{i}]")
                      for i, s in enumerate(_list(d["action"], "action", where))]
            if not action:
                raise ConfigError(f"{where}: 'action' is empty; name a command topic or use 'action: next_state'")
        episodes = d.get("episodes") or {}
        if isinstance(episodes, str):
            episodes = {"topic": episodes}
        check_keys(episodes, ["topic"], f"{where} episodes")
        m = cls(fps=fps, cameras=cameras, state=state, action=action, robot_type=str(d.get("robot_type", "unknown")),
                instruction=d.get("instruction"), instructions=dict(d.get("instructions") or {}),
                instruction_topic=d.get("instruction_topic"), episode_topic=episodes.get("topic"),
                max_staleness=_positive(d.get("max_staleness", 0.2), "max_staleness", where),
                on_gap=str(d.get("on_gap", "cut")), min_episode_s=float(d.get("min_episode_s", 1.0)),
                stamp=str(d.get("stamp", "header")), name=name, source_text=text)
        if m.on_gap not in ("cut", "drop"):
            raise ConfigError(f"{where}: on_gap must be 'cut' (split the episode at the gap) or 'drop' (drop the "
                              f"episode), got {m.on_gap!r}")
        for s in [m, *m.cameras.values(), *m.state, *(m.action or [])]:
            if s.stamp is not None and s.stamp not in STAMPS:
                raise ConfigError(f"{where}: stamp must be 'header' (the message's header.stamp) or 'log' "
                                  f"(the time the recorder got it), got {s.stamp!r}")
        return m

    @classmethod
    def resolve(cls, spec: "str | Path | dict | McapMapping") -> "McapMapping":
        """A YAML/JSON file path, an inline YAML/JSON string, a dict, or a mapping."""
        if isinstance(spec, McapMapping):
            return spec
        if isinstance(spec, dict):
            return cls.from_dict(spec, text=json.dumps(spec, sort_keys=True))
        s = str(spec)
        p = Path(s)
        if p.suffix in (".yaml", ".yml", ".json") or (len(s) < 4096 and "\n" not in s and p.exists()):
            if not p.is_file():
                raise ConfigError(f"MCAP mapping file {p} does not exist; write one (`vla data inspect-mcap FILE` "
                                  "prints a starter mapping)")
            text, name = p.read_text(encoding="utf-8"), p.name
        else:
            text, name = s, "inline"
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"MCAP mapping {name} is not valid YAML/JSON: {e}") from e
        return cls.from_dict(d, name=name, text=text)

    # -- queries -----------------------------------------------------------------------------
    def streams(self) -> dict[str, "CameraSpec | VectorSpec"]:
        """Every resampled stream by a stable key: camera keys, state[i], action[i]."""
        out: dict[str, CameraSpec | VectorSpec] = dict(self.cameras)
        out.update({f"state[{i}]": s for i, s in enumerate(self.state)})
        out.update({f"action[{i}]": s for i, s in enumerate(self.action or [])})
        return out

    def topics(self) -> set[str]:
        t = {s.topic for s in self.streams().values()}
        return t | {x for x in (self.instruction_topic, self.episode_topic) if x}

    def staleness_s(self, spec: "CameraSpec | VectorSpec") -> float:
        return spec.max_staleness if spec.max_staleness is not None else self.max_staleness

    def stamp_of(self, spec: "CameraSpec | VectorSpec") -> str:
        return spec.stamp or self.stamp

    def as_dict(self) -> dict[str, Any]:
        """Parsed form (for provenance next to the text as given)."""
        d = asdict(self)
        d.pop("source_text")
        return d


def _positive(v: Any, key: str, where: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        x = -1.0
    if not x > 0:
        raise ConfigError(f"{where}: {key} must be a positive number, got {v!r}")
    return x


def _list(v: Any, key: str, where: str) -> list:
    if isinstance(v, dict):
        return [v]
    if not isinstance(v, list):
        raise ConfigError(f"{where}: {key!r} must be a list of {{topic: ...}} entries, got {v!r}")
    return v


def _spec(cls, d: Any, where: str, **extra):
    if not isinstance(d, dict) or "topic" not in d:
        raise ConfigError(f"{where}: needs at least {{topic: /name}}, got {d!r}")
    check_keys(d, [f for f in cls.__dataclass_fields__ if f not in extra], where)
    return cls(**d, **extra)


__all__ = ["McapMapping", "CameraSpec", "VectorSpec"]
