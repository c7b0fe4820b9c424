"""ROS 2 message definitions (``ros2msg`` text, as ROS 2 Humble/Jazzy ship them) for writing MCAP files.

A ROS 2 MCAP file carries each channel's schema as the message definition followed by the
definitions it depends on, separated by a line of 80 ``=`` and ``MSG: pkg/Type``: the same
layout ``rosbag2`` writes. Reading needs none of this (the schemas are in the file); tests,
benchmarks and examples use it to write recordings with the ROS 2 types robots publish.
"""

from __future__ import annotations

import re

_SEP = "=" * 80

# Comments and constants that do not change the wire format are left out.
DEFINITIONS: dict[str, str] = {
    "builtin_interfaces/Time": "int32 sec\nuint32 nanosec",
    "std_msgs/Header": "builtin_interfaces/Time stamp\nstring frame_id",
    "std_msgs/String": "string data",
    "std_msgs/Bool": "bool data",
    "std_msgs/Float32": "float32 data",
    "std_msgs/Float64": "float64 data",
    "std_msgs/MultiArrayDimension": "string label\nuint32 size\nuint32 stride",
    "std_msgs/MultiArrayLayout": "std_msgs/MultiArrayDimension[] dim\nuint32 data_offset",
    "std_msgs/Float32MultiArray": "std_msgs/MultiArrayLayout layout\nfloat32[] data",
    "std_msgs/Float64MultiArray": "std_msgs/MultiArrayLayout layout\nfloat64[] data",
    "sensor_msgs/Image": "std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\nuint8 is_bigendian\n"
                         "uint32 step\nuint8[] data",
    "sensor_msgs/CompressedImage": "std_msgs/Header header\nstring format\nuint8[] data",
    "sensor_msgs/JointState": "std_msgs/Header header\nstring[] name\nfloat64[] position\nfloat64[] velocity\n"
                              "float64[] effort",
    "geometry_msgs/Point": "float64 x\nfloat64 y\nfloat64 z",
    "geometry_msgs/Vector3": "float64 x\nfloat64 y\nfloat64 z",
    "geometry_msgs/Quaternion": "float64 x\nfloat64 y\nfloat64 z\nfloat64 w",
    "geometry_msgs/Pose": "geometry_msgs/Point position\ngeometry_msgs/Quaternion orientation",
    "geometry_msgs/Twist": "geometry_msgs/Vector3 linear\ngeometry_msgs/Vector3 angular",
    "geometry_msgs/PointStamped": "std_msgs/Header header\ngeometry_msgs/Point point",
    "geometry_msgs/Vector3Stamped": "std_msgs/Header header\ngeometry_msgs/Vector3 vector",
    "geometry_msgs/PoseStamped": "std_msgs/Header header\ngeometry_msgs/Pose pose",
    "geometry_msgs/TwistStamped": "std_msgs/Header header\ngeometry_msgs/Twist twist",
}


def short_type(name: str) -> str:
    """'sensor_msgs/msg/Image' -> 'sensor_msgs/Image' (the form message definitions use)."""
    return re.sub(r"/(msg|srv|action)/", "/", name)


def schema_name(name: str) -> str:
    """'sensor_msgs/Image' -> 'sensor_msgs/msg/Image' (the schema name rosbag2 writes)."""
    name = short_type(name)
    pkg, typ = name.split("/", 1)
    kind = "srv" if typ.endswith(("_Request", "_Response", "_Event")) else "msg"
    return f"{pkg}/{kind}/{typ}"


def msgdef(name: str) -> str:
    """The full ``ros2msg`` schema text of ``name``, dependencies appended depth-first."""
    root = short_type(name)
    if root not in DEFINITIONS:
        raise KeyError(f"no ROS 2 definition for {name!r}; known: {sorted(DEFINITIONS)}")
    order: list[str] = []

    def visit(t: str) -> None:
        for line in DEFINITIONS[t].splitlines():
            dep = re.sub(r"\[.*\]$", "", line.split()[0])
            if "/" in dep and dep not in order:
                order.append(dep)
                visit(dep)

    visit(root)
    parts = [DEFINITIONS[root]] + [f"{_SEP}\nMSG: {d}\n{DEFINITIONS[d]}" for d in order]
    return "\n".join(parts) + "\n"


__all__ = ["DEFINITIONS", "msgdef", "schema_name", "short_type"]
