"""RLDS / Open X-Embodiment episodes from TFRecord files, without TensorFlow.

TFDS stores each RLDS episode as one ``tf.train.Example`` whose keys flatten the
nesting with "/" (``steps/observation/image``, ``steps/action``, ...) and whose
per-step values are concatenated: images are a list of T encoded JPEG/PNG
strings, a (T, D) tensor is a float list of T*D values. The ``tfrecord``
package reads the records and bundles the Example protobuf; Pillow decodes the
images.

A mapping says which keys are the cameras, the action (concatenated in order),
the state and the language instruction. A few well-known OXE datasets are
built in (``BUILTIN_MAPPINGS``); for others pass a JSON mapping. Values are
taken as stored (physical units, no gripper relabelling).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ...errors import ConfigError, DatasetError, check_keys
from ...images import decode_stored_image
from ..outcomes import Outcomes, label_code


def _k(key: str) -> str:
    """Step-level keys may be given without the leading "steps/"."""
    return key if key.startswith(("steps/", "episode_metadata/")) else f"steps/{key}"


@dataclass
class RLDSMapping:
    """Which RLDS keys feed the LeRobot features.

    images: RLDS image key -> LeRobot camera key (e.g. "observation.images.image").
    actions / state: RLDS keys concatenated in this order along the last axis.
    instruction: RLDS key of the language instruction (per step or per episode).
    """

    images: dict[str, str]
    actions: list[str]
    instruction: str | None = None
    state: list[str] = field(default_factory=list)
    fps: float | None = None
    robot_type: str = "unknown"
    action_names: list[str] | None = None
    state_names: list[str] | None = None
    default_instruction: str | None = None  # used when an episode has no instruction
    name: str = "custom"

    def __post_init__(self) -> None:
        if not self.images:
            raise ConfigError(f"RLDS mapping {self.name!r} needs at least one image key")
        if not self.actions:
            raise ConfigError(f"RLDS mapping {self.name!r} needs at least one action key")
        if isinstance(self.actions, str):
            self.actions = [self.actions]
        if isinstance(self.state, str):
            self.state = [self.state]
        self.images = {_k(k): v for k, v in self.images.items()}
        self.actions = [_k(k) for k in self.actions]
        self.state = [_k(k) for k in self.state]
        if self.instruction:
            self.instruction = _k(self.instruction)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RLDSMapping":
        check_keys(d, [f for f in cls.__dataclass_fields__], "RLDS mapping")
        images = d.get("images")
        if isinstance(images, list):  # ["observation/image"] -> default camera keys
            images = {k: f"observation.images.{k.rstrip('/').split('/')[-1]}" for k in images}
        return cls(**{**d, "images": images or {}})

    @classmethod
    def resolve(cls, spec: "str | dict | RLDSMapping") -> "RLDSMapping":
        """A built-in name ("fractal20220817_data", "bridge", "taco_play", ...), a JSON string,
        a path to a JSON file, a dict, or a mapping."""
        if isinstance(spec, RLDSMapping):
            return spec
        if isinstance(spec, dict):
            return cls.from_dict(spec)
        s = str(spec).strip()
        if s in BUILTIN_MAPPINGS:
            return BUILTIN_MAPPINGS[s]
        if s.startswith("{"):
            try:
                return cls.from_dict(json.loads(s))
            except json.JSONDecodeError as e:
                raise ConfigError(f"RLDS mapping is not valid JSON ({e.msg} at column {e.colno}): {s[:80]}") from e
        p = Path(s)
        if p.suffix == ".json" and p.exists():
            try:
                return cls.from_dict(json.loads(p.read_text()))
            except json.JSONDecodeError as e:
                raise ConfigError(f"{p} is not valid JSON (line {e.lineno}: {e.msg})") from e
        close = difflib.get_close_matches(s, list(BUILTIN_MAPPINGS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown RLDS mapping {s!r}.{hint} Use a built-in name {sorted(BUILTIN_MAPPINGS)} or JSON like "
            '{"images": {"observation/image": "observation.images.main"}, "actions": ["action"], '
            '"instruction": "language_instruction", "state": ["observation/state"], "fps": 10}'
        )


# Feature names as published in the OXE RLDS datasets (see the Open X-Embodiment dataset
# spreadsheet and Octo's oxe_standardization_transforms); control rates from the same source.
BUILTIN_MAPPINGS: dict[str, RLDSMapping] = {}


def _register(mapping: RLDSMapping, *aliases: str) -> None:
    for n in (mapping.name, *aliases):
        BUILTIN_MAPPINGS[n] = mapping


_register(RLDSMapping(
    name="fractal20220817_data", robot_type="google_robot", fps=3,
    images={"observation/image": "observation.images.image"},
    actions=["action/world_vector", "action/rotation_delta", "action/gripper_closedness_action"],
    action_names=["x", "y", "z", "roll", "pitch", "yaw", "gripper_closedness"],
    state=["observation/base_pose_tool_reached", "observation/gripper_closed"],
    state_names=["x", "y", "z", "qw", "qx", "qy", "qz", "gripper_closed"],
    instruction="observation/natural_language_instruction",
), "rt1", "fractal")
_register(RLDSMapping(
    name="bridge", robot_type="widowx", fps=5,  # the OXE copy of BridgeData V2
    images={"observation/image": "observation.images.image"},
    actions=["action/world_vector", "action/rotation_delta", "action/open_gripper"],
    action_names=["x", "y", "z", "roll", "pitch", "yaw", "open_gripper"],
    state=["observation/state"],
    state_names=["x", "y", "z", "roll", "pitch", "yaw", "gripper"],
    instruction="observation/natural_language_instruction",
))
_register(RLDSMapping(
    name="bridge_dataset", robot_type="widowx", fps=5,  # Berkeley's own, newer BridgeData V2 TFDS release
    images={"observation/image_0": "observation.images.image_0"},
    actions=["action"],
    action_names=["x", "y", "z", "roll", "pitch", "yaw", "gripper"],
    state=["observation/state"],
    state_names=["x", "y", "z", "roll", "pitch", "yaw", "gripper"],
    instruction="language_instruction",
), "bridge_orig")
_register(RLDSMapping(
    name="taco_play", robot_type="franka", fps=15,
    images={"observation/rgb_static": "observation.images.rgb_static",
            "observation/rgb_gripper": "observation.images.rgb_gripper"},
    actions=["action/rel_actions_world"],
    action_names=["x", "y", "z", "roll", "pitch", "yaw", "gripper"],
    state=["observation/robot_obs"],
    state_names=["tcp_x", "tcp_y", "tcp_z", "tcp_roll", "tcp_pitch", "tcp_yaw", "gripper_width",
                 *[f"joint_{i}" for i in range(7)], "gripper_action"],
    instruction="observation/natural_language_instruction",
))


@dataclass
class RLDSEpisode:
    index: int
    actions: np.ndarray  # (T, D) float32
    states: np.ndarray | None  # (T, S) float32
    images: dict[str, np.ndarray]  # LeRobot camera key -> (T, H, W, 3) uint8
    task: str
    source: str  # file the episode came from
    outcomes: Outcomes | None = None  # from steps/reward, is_terminal, is_last when the dataset has all three

    @property
    def length(self) -> int:
        return len(self.actions)


class RLDSDataset:
    """Episodes of one RLDS dataset (a TFDS directory of ``*.tfrecord*`` shards, or one file).

    >>> ds = RLDSDataset("fractal20220817_data/0.1.0", mapping="fractal20220817_data")
    >>> for ep in ds.episodes(): ...
    """

    def __init__(self, path: str | Path, mapping: "str | dict | RLDSMapping | None" = None):
        self.path = Path(path)
        if not self.path.exists():
            raise DatasetError(f"{self.path} does not exist")
        if self.path.is_file():
            self.files = [self.path]
        else:
            self.files = sorted(p for p in self.path.rglob("*") if p.is_file() and ".tfrecord" in p.name)
            if not self.files:
                raise DatasetError(f"{self.path} holds no *.tfrecord* files: is it an RLDS/TFDS dataset directory?")
        self.info = self._dataset_info()
        if mapping is None:
            name = self.info.get("name")
            if name not in BUILTIN_MAPPINGS:
                raise ConfigError(
                    f"no RLDS mapping given for {self.path}"
                    + (f" (dataset_info.json names it {name!r}, which has no built-in mapping)" if name else "")
                    + f": pass mapping= (CLI: --mapping) with a built-in name {sorted(BUILTIN_MAPPINGS)} or JSON"
                )
            mapping = name
        self.mapping = RLDSMapping.resolve(mapping)

    def _dataset_info(self) -> dict:
        d = self.path if self.path.is_dir() else self.path.parent
        p = d / "dataset_info.json"
        if p.exists():
            try:
                return json.loads(p.read_text())
            except json.JSONDecodeError as e:
                raise DatasetError(f"{p} is not valid JSON ({e.msg}); re-download it") from e
        return {}

    # -- raw records -------------------------------------------------------------------------
    def _records_of(self, f: Path) -> Iterator[tuple[Path, int, Any]]:
        from google.protobuf.message import DecodeError
        from tfrecord import example_pb2
        from tfrecord.reader import tfrecord_iterator

        n = 0
        try:
            for raw in tfrecord_iterator(str(f)):
                try:
                    ex = example_pb2.Example.FromString(bytes(raw))
                except DecodeError as e:
                    raise DatasetError(f"{f} record {n}: not a tf.train.Example ({e}); the file is corrupt") from e
                yield f, n, ex
                n += 1
        except RuntimeError as e:  # tfrecord raises RuntimeError("Failed to read the record ...")
            raise DatasetError(
                f"{f} is truncated after {n} complete record(s) ({e}): re-download or regenerate it"
            ) from e

    def _records(self) -> Iterator[tuple[Path, int, Any]]:
        for f in self.files:
            yield from self._records_of(f)

    def keys(self) -> dict[str, str]:
        """Keys of the first episode and their value kinds (bytes_list/float_list/int64_list)."""
        for _, _, ex in self._records():
            return {k: v.WhichOneof("kind") for k, v in sorted(ex.features.feature.items())}
        return {}

    def __len__(self) -> int:
        from tfrecord.reader import tfrecord_iterator

        n = 0
        for f in self.files:
            try:
                n += sum(1 for _ in tfrecord_iterator(str(f)))
            except RuntimeError as e:
                raise DatasetError(f"{f} is truncated ({e}): re-download or regenerate it") from e
        return n

    # -- episodes ----------------------------------------------------------------------------
    def _get(self, feats, key: str, where: str):
        if key not in feats:
            avail = sorted(feats)
            close = difflib.get_close_matches(key, avail, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise DatasetError(
                f"{where}: key {key!r} of mapping {self.mapping.name!r} is not in the record.{hint} "
                f"Available keys: {avail}. Fix the mapping (--mapping JSON)"
            )
        f = feats[key]
        kind = f.WhichOneof("kind")
        return kind, (getattr(f, kind).value if kind else [])

    def _vector(self, feats, keys: list[str], T: int, where: str) -> np.ndarray:
        parts = []
        for key in keys:
            kind, vals = self._get(feats, key, where)
            if kind not in ("float_list", "int64_list"):
                raise DatasetError(f"{where}: {key!r} holds {kind}, expected numbers")
            arr = np.asarray(vals, dtype=np.float32)
            if arr.size % T:
                raise DatasetError(f"{where}: {key!r} has {arr.size} values, not a multiple of the {T} steps")
            parts.append(arr.reshape(T, -1))
        out = np.concatenate(parts, axis=1)
        if not np.all(np.isfinite(out)):
            t, d = np.argwhere(~np.isfinite(out))[0]
            raise DatasetError(f"{where}: {keys} value at step {t} dim {d} is NaN/inf; repair or drop the episode")
        return out

    def _num_steps(self, feats, where: str) -> int:
        for key in ("steps/is_first", "steps/is_last", "steps/reward"):
            if key in feats:
                kind, vals = self._get(feats, key, where)
                return len(vals)
        _, vals = self._get(feats, next(iter(self.mapping.images)), where)
        return len(vals)

    def _episode(self, index: int, f: Path, n: int, ex) -> RLDSEpisode:
        feats = ex.features.feature
        where = f"{f.name} episode {n}"
        T = self._num_steps(feats, where)
        if T == 0:
            raise DatasetError(f"{where}: the episode has no steps")
        actions = self._vector(feats, self.mapping.actions, T, where)
        states = self._vector(feats, self.mapping.state, T, where) if self.mapping.state else None
        images = {}
        for key, cam in self.mapping.images.items():
            kind, vals = self._get(feats, key, where)
            if kind != "bytes_list" or len(vals) != T:
                raise DatasetError(f"{where}: {key!r} should hold {T} encoded images, holds {len(vals)} {kind} values")
            frames = [decode_stored_image(v, f"{where} {key} step {t}") for t, v in enumerate(vals)]
            if len({fr.shape for fr in frames}) != 1:
                raise DatasetError(f"{where}: images of {key!r} change size within the episode")
            images[cam] = np.stack(frames)
        task = ""
        if self.mapping.instruction:
            kind, vals = self._get(feats, self.mapping.instruction, where)
            texts = [v.decode("utf-8", errors="replace").strip() if isinstance(v, bytes) else str(v) for v in vals]
            task = next((t for t in texts if t), "")
        if not task:
            if self.mapping.default_instruction is None:
                raise DatasetError(
                    f"{where}: empty language instruction ({self.mapping.instruction!r}); set "
                    "'default_instruction' in the mapping to use a fixed one"
                )
            task = self.mapping.default_instruction
        return RLDSEpisode(index=index, actions=actions, states=states, images=images, task=task, source=str(f),
                           outcomes=self._outcomes(feats, T, where))

    def _outcomes(self, feats, T: int, where: str) -> Outcomes | None:
        """RLDS ``reward``, ``is_terminal`` and ``is_last`` as LeRobot's next.reward, next.success and next.done.

        RLDS scores the transition a step's action starts, as LeRobot's ``next.*`` columns do; a terminal step
        is one where the task ended by reaching its goal. Labels are the recording's own (demonstration).
        """
        keys = ("steps/reward", "steps/is_terminal", "steps/is_last")
        if not all(k in feats for k in keys):
            return None
        cols = []
        for key in keys:
            _, vals = self._get(feats, key, where)
            if len(vals) != T:
                raise DatasetError(f"{where}: {key!r} has {len(vals)} values for {T} steps")
            cols.append(np.asarray(vals, np.float64))
        reward, terminal, last = cols
        return Outcomes(reward, terminal > 0, last > 0, np.full(T, label_code("demonstration")))

    def episodes(self, skipped: dict[int, str] | None = None) -> Iterator[RLDSEpisode]:
        """Every episode in file order, decoded (images included).

        With ``skipped`` (a dict), episodes that fail to decode are recorded there
        (index -> reason) instead of raising; a truncated file ends that file's
        episodes and is recorded under key -1 - file_position.
        """
        index = 0
        for k, f in enumerate(self.files):
            it = self._records_of(f)
            while True:
                try:
                    _, n, ex = next(it)
                except StopIteration:
                    break
                except DatasetError as e:
                    if skipped is None:
                        raise
                    skipped[-1 - k] = str(e)
                    break
                try:
                    yield self._episode(index, f, n, ex)
                except DatasetError as e:
                    if skipped is None:
                        raise
                    skipped[index] = str(e)
                index += 1

    def names(self, dim: int, state: bool = False) -> tuple[list[str], str | None]:
        """Action (or state) dimension names from the mapping, and a note when they had to be synthesized."""
        names = self.mapping.state_names if state else self.mapping.action_names
        what = "state" if state else "action"
        if names and len(names) == dim:
            return list(names), None
        why = "the mapping gives none" if not names else f"the mapping gives {len(names)} names for {dim} dims"
        return [f"{what}_{i}" for i in range(dim)], f"{what} names synthesized ({why})"
