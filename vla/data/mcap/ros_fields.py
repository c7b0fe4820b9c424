"""Numbers out of ROS 2 messages for the state and the action.

Supported: ``sensor_msgs/JointState`` (joints by name), ``std_msgs/Float32|Float64`` and their
``MultiArray`` forms, and ``geometry_msgs`` Point, Vector3, Pose, Twist (plain or Stamped).
"""

from __future__ import annotations

from typing import Any, Callable

from ...errors import DatasetError
from .ros2_msgs import short_type

# type -> (attribute path to the inner value, component names, component attribute paths)
_XYZ = ["x", "y", "z"]
_GEOMETRY: dict[str, tuple[str | None, list[str], list[str]]] = {
    "geometry_msgs/Point": (None, _XYZ, _XYZ),
    "geometry_msgs/Vector3": (None, _XYZ, _XYZ),
    "geometry_msgs/PointStamped": ("point", _XYZ, _XYZ),
    "geometry_msgs/Vector3Stamped": ("vector", _XYZ, _XYZ),
    "geometry_msgs/Pose": (None, ["x", "y", "z", "qx", "qy", "qz", "qw"],
                           [f"position.{c}" for c in _XYZ] + [f"orientation.{c}" for c in "xyzw"]),
    "geometry_msgs/PoseStamped": ("pose", ["x", "y", "z", "qx", "qy", "qz", "qw"],
                                  [f"position.{c}" for c in _XYZ] + [f"orientation.{c}" for c in "xyzw"]),
    "geometry_msgs/Twist": (None, ["vx", "vy", "vz", "wx", "wy", "wz"],
                            [f"linear.{c}" for c in _XYZ] + [f"angular.{c}" for c in _XYZ]),
    "geometry_msgs/TwistStamped": ("twist", ["vx", "vy", "vz", "wx", "wy", "wz"],
                                   [f"linear.{c}" for c in _XYZ] + [f"angular.{c}" for c in _XYZ]),
}
_SCALARS = ("std_msgs/Float32", "std_msgs/Float64")
_ARRAYS = ("std_msgs/Float32MultiArray", "std_msgs/Float64MultiArray")
VECTOR_TYPES = sorted(["sensor_msgs/JointState", *_SCALARS, *_ARRAYS, *_GEOMETRY])


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


class VectorReader:
    """Reads the numbers a ``VectorSpec`` selects from messages of one topic.

    ``names`` is known once the first message was read (array lengths come from the data).
    """

    def __init__(self, spec, msg_type: str, where: str):
        self.spec, self.type, self.where = spec, short_type(msg_type), where
        self.names: list[str] | None = None
        base = spec.topic.strip("/").replace("/", ".") or "value"
        if self.type not in VECTOR_TYPES:
            raise DatasetError(f"{where}: the topic is {msg_type}, which cannot give a state/action vector. "
                               f"Supported types: {', '.join(VECTOR_TYPES)}. Fix: map a topic of one of those types")
        if spec.joints is not None and self.type != "sensor_msgs/JointState":
            raise DatasetError(f"{where}: 'joints' needs a sensor_msgs/JointState topic, but {spec.topic} is {msg_type}. "
                               "Fix: use 'indices'/'components' for this type, or point the entry at the joint states")
        if self.type == "sensor_msgs/JointState":
            if not spec.joints:
                raise DatasetError(f"{where}: {spec.topic} is sensor_msgs/JointState: list the joints to take, "
                                   "e.g. 'joints: [shoulder, elbow]' (`vla data inspect-mcap` prints them)")
            if spec.field not in ("position", "velocity", "effort"):
                raise DatasetError(f"{where}: field must be position, velocity or effort, got {spec.field!r}")
            suffix = "" if spec.field == "position" else f".{spec.field}"
            self._set_names([f"{j}{suffix}" for j in spec.joints])
            self._read: Callable[[Any], list[float]] = self._joint_state
            self._order: dict[tuple, list[int]] = {}
        elif self.type in _GEOMETRY:
            inner, comps, paths = _GEOMETRY[self.type]
            want = spec.components or comps
            bad = [c for c in want if c not in comps]
            if bad:
                raise DatasetError(f"{where}: {self.type} has no component(s) {bad}; it has {comps}")
            sel = [paths[comps.index(c)] for c in want]
            self._set_names([f"{base}.{c}" for c in want])
            self._read = lambda m: [float(_get(m, f"{inner}.{p}" if inner else p)) for p in sel]
        elif self.type in _SCALARS:
            self._set_names([base])
            self._read = lambda m: [float(m.data)]
        else:
            self._read = self._array

    def _set_names(self, default: list[str]) -> None:
        names = self.spec.names or default
        if len(names) != len(default):
            raise DatasetError(f"{self.where}: 'names' has {len(names)} entries for {len(default)} values of "
                               f"{self.spec.topic}; give one name per value")
        self.names = list(names)

    def _joint_state(self, m: Any) -> list[float]:
        key = tuple(m.name)
        order = self._order.get(key)
        if order is None:
            missing = [j for j in self.spec.joints if j not in key]
            if missing:
                raise DatasetError(f"{self.where}: joint(s) {missing} are not in the messages, which name "
                                   f"{list(key)}. Fix 'joints:' in the mapping")
            order = self._order[key] = [key.index(j) for j in self.spec.joints]
        values = getattr(m, self.spec.field)
        if len(values) != len(key):
            raise DatasetError(f"{self.where}: {self.spec.topic} has {len(key)} joint names but {len(values)} "
                               f"{self.spec.field} values. Fix: take another 'field' (position/velocity/effort)")
        return [float(values[i]) for i in order]

    def _array(self, m: Any) -> list[float]:
        data = m.data
        if self.names is None:
            idx = self.spec.indices if self.spec.indices is not None else list(range(len(data)))
            if not idx:
                raise DatasetError(f"{self.where}: {self.spec.topic} has an empty data array")
            self._idx = idx
            base = self.spec.topic.strip("/").replace("/", ".")
            self._set_names([f"{base}.{i}" for i in idx])
        if self.spec.indices is None and len(data) != len(self._idx):
            raise DatasetError(f"{self.where}: {self.spec.topic} changes length from {len(self._idx)} to {len(data)} "
                               "values; pick fixed 'indices' in the mapping")
        if max(self._idx) >= len(data):
            raise DatasetError(f"{self.where}: {self.spec.topic} has {len(data)} values; 'indices' asks for "
                               f"{max(self._idx)}. Fix 'indices' in the mapping")
        return [float(data[i]) for i in self._idx]

    def __call__(self, msg: Any) -> list[float]:
        return self._read(msg)


__all__ = ["VectorReader", "VECTOR_TYPES"]
