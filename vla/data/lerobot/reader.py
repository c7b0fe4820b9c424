"""Reader for LeRobot datasets, codebase versions v2.0/v2.1 and v3.0 (auto-detected).
(Over 400 lines: two on-disk layouts, v2.x and v3.0, behind one reader interface.)

v2.x: one parquet and one MP4 per camera per episode; meta/episodes.jsonl,
tasks.jsonl, episodes_stats.jsonl. v3.0: many episodes per parquet/MP4 file;
meta/episodes/*/*.parquet holds each episode's row range and video time range;
meta/tasks.parquet; meta/stats.json. Only pyarrow and PyAV are needed.
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ...normalize import STAT_KEYS, Stats
from ...errors import DatasetError
from .. import stats as _stats
from ..outcomes import COLUMNS as OUTCOME_COLUMNS
from ..video import VideoReader

ACTION = "action"
STATE = "observation.state"
SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
_LOW_DIM_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


@dataclass
class Episode:
    """One episode's low-dimensional data (images are read lazily with ``LeRobotDataset.frames``)."""

    index: int
    length: int
    actions: np.ndarray  # (T, D) float32, physical units
    states: np.ndarray | None  # (T, S) float32
    task: str  # the episode's (first) task
    timestamps: np.ndarray  # (T,) float64 seconds from the episode start
    task_indices: np.ndarray | None = None  # (T,) per-frame task index into LeRobotDataset.tasks
    tasks: list[str] = field(default_factory=list)  # all tasks of the episode
    # next.reward / next.success / next.done / label_source, (T,) each, for the columns the dataset has
    outcomes: dict[str, np.ndarray] = field(default_factory=dict)


def read_json(path: Path) -> Any:
    """json.load with a DatasetError naming the file for missing/truncated files."""
    if not path.exists():
        raise DatasetError(f"{path} is missing: the dataset is incomplete; re-download or regenerate it")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); the file is truncated or "
            "corrupt: re-download or regenerate it"
        ) from e


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise DatasetError(f"{path} is missing: the dataset is incomplete; re-download or regenerate it")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DatasetError(
                f"{path} line {n} is not valid JSON ({e.msg}); the file is truncated or corrupt: re-download or "
                "regenerate it"
            ) from e
    return rows


def read_parquet(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """pq.read_table with DatasetErrors naming the file and the missing columns."""
    if not path.exists():
        raise DatasetError(f"data file {path} is missing: download/copy the complete dataset")
    try:
        schema = pq.read_schema(path)
        if columns is not None:
            missing = [c for c in columns if c not in schema.names]
            if missing:
                raise DatasetError(
                    f"{path} lacks column(s) {missing} (it has {schema.names}); its schema does not match "
                    "meta/info.json: regenerate the file or fix info.json"
                )
        return pq.read_table(path, columns=list(columns) if columns is not None else None)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
        raise DatasetError(
            f"cannot read parquet file {path} ({e}); it is truncated or corrupt: re-download or regenerate it"
        ) from e


def feature_names(feature: dict, dim: int, prefix: str) -> tuple[list[str], str | None]:
    """Names of a vector feature's dimensions from info.json, and a note when they had to be synthesized.

    Handles the forms seen in real datasets: ["x", "y"], [["x", "y"]] and {"motors": ["x", "y"]}.
    """
    names = feature.get("names")
    flat: list | None = None
    if isinstance(names, dict):
        flat = [n for v in names.values() for n in (v if isinstance(v, list) else [v])]
    elif isinstance(names, list):
        flat = names[0] if len(names) == 1 and isinstance(names[0], list) else names
        if any(isinstance(n, list) for n in flat):
            flat = [m for n in flat for m in (n if isinstance(n, list) else [n])]
    if flat is not None and len(flat) == dim and all(isinstance(n, str) for n in flat):
        return list(flat), None
    if flat is None:
        why = "info.json gives no names"
    else:
        why = f"info.json names have {len(flat)} entries for {dim} dims"
    return [f"{prefix}_{i}" for i in range(dim)], why


def column_to_array(col: pa.ChunkedArray | pa.Array, dim: int, what: str) -> np.ndarray:
    """A list<float> parquet column -> (N, dim) float32, checking every row has ``dim`` values."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    n = len(col)
    if pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        if col.null_count:
            raise DatasetError(f"{what}: {col.null_count} row(s) are null; fix or drop them")
        if not pa.types.is_fixed_size_list(col.type):
            lengths = np.diff(col.offsets.to_numpy())
            if np.any(lengths != dim):
                bad = int(np.argmax(lengths != dim))
                raise DatasetError(
                    f"{what}: row {bad} has {lengths[bad]} values but meta/info.json says shape [{dim}]; "
                    "the schema does not match info.json: fix info.json or regenerate the data"
                )
        flat = col.flatten().to_numpy(zero_copy_only=False)
        if flat.size != n * dim:
            raise DatasetError(
                f"{what}: {flat.size // max(n, 1)} values per row but meta/info.json says shape [{dim}]; "
                "the schema does not match info.json: fix info.json or regenerate the data"
            )
        return flat.reshape(n, dim).astype(np.float32, copy=False)
    if dim == 1 and (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
        return col.to_numpy(zero_copy_only=False).reshape(n, 1).astype(np.float32)
    raise DatasetError(f"{what}: column type {col.type} is not a list of numbers as meta/info.json declares")


def _check_finite(arr: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        t, d = np.argwhere(bad)[0]
        raise DatasetError(
            f"{what}: {int(bad.sum())} NaN/inf value(s), first at frame {t} dim {d}. Repair the recording, or "
            "leave the episode out (ChunkDataset(..., on_bad_episode='exclude') counts and reports it)"
        )


def _stats_from_meta(d: dict, what: str) -> dict[str, np.ndarray]:
    out = {}
    for k, v in d.items():
        try:
            out[k] = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise DatasetError(f"{what}: statistic {k!r} is not numeric") from e
    return out


class LeRobotDataset:
    """A local LeRobot dataset (v2.0/v2.1/v3.0), read with pyarrow + PyAV.

    >>> ds = LeRobotDataset("data/aloha_sim")
    >>> ep = ds.episode(0); ep.actions.shape          # (T, D) float32
    >>> ds.frame(0, 10, "observation.images.top")     # (H, W, 3) uint8
    """

    def __init__(self, root: str | Path, *, cache_files: int = 4, cache_videos: int = 8):
        self.root = Path(root)
        info_path = self.root / "meta" / "info.json"
        if not info_path.exists():
            raise DatasetError(
                f"{self.root} is not a LeRobot dataset: meta/info.json is missing. A LeRobot dataset has "
                "meta/info.json, data/ and videos/; for RLDS TFRecords use vla.data.rlds or `vla data convert`"
            )
        self.info: dict = read_json(info_path)
        self.version: str = str(self.info.get("codebase_version", ""))
        if self.version not in SUPPORTED_VERSIONS:
            raise DatasetError(
                f"{info_path}: codebase_version {self.version!r} is not supported (supported: "
                f"{list(SUPPORTED_VERSIONS)}); convert it with LeRobot's conversion scripts first"
            )
        for key in ("fps", "features", "data_path"):
            if key not in self.info:
                raise DatasetError(f"{info_path} lacks {key!r}: the file is incomplete; regenerate it")
        self.features: dict = self.info["features"]
        self.fps: float = float(self.info["fps"])
        self.robot_type: str = str(self.info.get("robot_type") or "unknown")
        self.notes: list[str] = []  # things a user should know (shown by `vla data info`)
        if ACTION not in self.features:
            raise DatasetError(
                f"{info_path}: features lack {ACTION!r} (have {sorted(self.features)}); this reader needs an "
                "'action' feature"
            )
        self.action_dim = int(np.prod(self.features[ACTION]["shape"]))
        self.action_names, why = feature_names(self.features[ACTION], self.action_dim, "action")
        if why:
            self.notes.append(f"action names synthesized ({why})")
        self.state_dim = int(np.prod(self.features[STATE]["shape"])) if STATE in self.features else 0
        if STATE in self.features:
            self.state_names, why = feature_names(self.features[STATE], self.state_dim, "state")
            if why:
                self.notes.append(f"state names synthesized ({why})")
        else:
            self.state_names = []
        self.cameras: dict[str, tuple[int, int]] = {}
        self.camera_codecs: dict[str, str] = {}
        for key, ft in self.features.items():
            if ft.get("dtype") in ("video", "image"):
                shape, names = list(ft["shape"]), ft.get("names") or []
                chw = bool(names) and str(names[0]).startswith("channel")
                self.cameras[key] = (int(shape[1]), int(shape[2])) if chw else (int(shape[0]), int(shape[1]))
                vinfo = ft.get("info") or ft.get("video_info") or {}
                self.camera_codecs[key] = str(vinfo.get("video.codec", "png" if ft["dtype"] == "image" else "?"))
        self._pid = os.getpid()
        self._tables: OrderedDict[Path, pa.Table] = OrderedDict()
        self._videos: OrderedDict[Path, VideoReader] = OrderedDict()
        self._inherited: list = []  # decoders inherited through fork (see _reset_after_fork)
        self._cache_files, self._cache_videos = cache_files, cache_videos
        if self.version == "v3.0":
            self._load_meta_v3()
        else:
            self._load_meta_v2()
        self.num_frames = int(sum(self._lengths.values()))
        if int(self.info.get("total_frames", self.num_frames)) != self.num_frames:
            self.notes.append(
                f"info.json total_frames={self.info.get('total_frames')} but episode lengths sum to {self.num_frames}"
            )
        self._stats: dict[str, Stats] | None = None

    # -- metadata ------------------------------------------------------------------------------
    def _load_meta_v2(self) -> None:
        meta = self.root / "meta"
        self.tasks: dict[int, str] = {int(r["task_index"]): str(r["task"]) for r in read_jsonl(meta / "tasks.jsonl")}
        self._lengths, self._ep_tasks = {}, {}
        for r in read_jsonl(meta / "episodes.jsonl"):
            try:
                i = int(r["episode_index"])
                self._lengths[i] = int(r["length"])
                self._ep_tasks[i] = [str(t) for t in r.get("tasks", [])]
            except (KeyError, TypeError, ValueError) as e:
                raise DatasetError(f"{meta / 'episodes.jsonl'}: bad row {r!r} ({e}); regenerate the file") from e
        self._chunks_size = int(self.info.get("chunks_size", 1000))
        self._raw_ep_stats: dict[int, dict] = {}
        p = meta / "episodes_stats.jsonl"
        if p.exists():
            for r in read_jsonl(p):
                self._raw_ep_stats[int(r["episode_index"])] = r.get("stats", {})

    def _load_meta_v3(self) -> None:
        meta = self.root / "meta"
        tasks_path = meta / "tasks.parquet"
        t = read_parquet(tasks_path)
        names = t.column_names
        # LeRobot writes the task strings as the pandas index ("task" or "__index_level_0__").
        task_col = next((c for c in ("task", "__index_level_0__") if c in names), None)
        if task_col is None or "task_index" not in names:
            raise DatasetError(f"{tasks_path} has columns {names}; expected 'task_index' and the task strings")
        self.tasks = {int(i): str(s) for i, s in zip(t.column("task_index").to_pylist(), t.column(task_col).to_pylist())}
        files = sorted((meta / "episodes").glob("*/*.parquet"))
        if not files:
            raise DatasetError(f"{meta / 'episodes'} holds no parquet files: the dataset is incomplete")
        ep_table = pa.concat_tables([read_parquet(f) for f in files], promote_options="default")
        need = ["episode_index", "length", "data/chunk_index", "data/file_index", "dataset_from_index", "dataset_to_index"]
        for cam in self.cameras:
            if self.features[cam]["dtype"] == "video":
                need += [f"videos/{cam}/{k}" for k in ("chunk_index", "file_index", "from_timestamp")]
        missing = [c for c in need if c not in ep_table.column_names]
        if missing:
            raise DatasetError(f"{meta / 'episodes'}: episode metadata lacks columns {missing}; regenerate it")
        cols = {c: ep_table.column(c).to_pylist() for c in ep_table.column_names if not c.startswith("stats/")}
        self._ep_rows: dict[int, dict] = {}
        self._lengths, self._ep_tasks = {}, {}
        for k, i in enumerate(cols["episode_index"]):
            row = {c: v[k] for c, v in cols.items()}
            self._ep_rows[int(i)] = row
            self._lengths[int(i)] = int(row["length"])
            self._ep_tasks[int(i)] = [str(x) for x in (row.get("tasks") or [])]
        self._raw_ep_stats = {}
        stat_cols = [c for c in ep_table.column_names if c.startswith("stats/")]
        if stat_cols:
            ids = cols["episode_index"]
            for c in stat_cols:
                _, feat, key = c.split("/", 2) if c.count("/") >= 2 else (None, c, "")
                for k, v in zip(ids, ep_table.column(c).to_pylist()):
                    self._raw_ep_stats.setdefault(int(k), {}).setdefault(feat, {})[key] = v

    @property
    def episode_indices(self) -> list[int]:
        return sorted(self._lengths)

    @property
    def num_episodes(self) -> int:
        return len(self._lengths)

    def episode_length(self, i: int) -> int:
        self._check_episode(i)
        return self._lengths[i]

    @property
    def license(self) -> str:
        """info.json "license", else the first line of a LICENSE file, else a dataset card's
        ``license:`` field, else "unknown"."""
        if self.info.get("license"):
            return str(self.info["license"])
        lic = self.root / "LICENSE"
        if lic.exists():
            first = next((ln.strip() for ln in lic.read_text(errors="replace").splitlines() if ln.strip()), "")
            if first:
                return f"{first} (from LICENSE)"
        card = self.root / "README.md"
        if card.exists():
            m = re.search(r"^license:\s*(\S+)", card.read_text(errors="replace"), re.M)
            if m:
                return f"{m.group(1)} (from README.md)"
        return "unknown"

    @property
    def provenance(self) -> dict:
        prov = self.info.get("provenance")
        return dict(prov) if isinstance(prov, dict) else {}

    def _check_episode(self, i: int) -> None:
        if i not in self._lengths:
            idx = self.episode_indices
            span = f"{idx[0]}..{idx[-1]}" if idx else "none"
            raise DatasetError(f"episode {i} is not in {self.root} (its metadata lists {len(idx)} episodes: {span})")

    # -- files -------------------------------------------------------------------------------
    def _data_file(self, i: int) -> Path:
        self._check_episode(i)
        if self.version == "v3.0":
            r = self._ep_rows[i]
            rel = self.info["data_path"].format(chunk_index=int(r["data/chunk_index"]), file_index=int(r["data/file_index"]))
        else:
            rel = self.info["data_path"].format(episode_chunk=i // self._chunks_size, episode_index=i)
        return self.root / rel

    def _video_file(self, i: int, camera: str) -> tuple[Path, float]:
        """Path of the MP4 holding episode i of ``camera`` and the episode's start time in it."""
        self._check_episode(i)
        tmpl = self.info.get("video_path")
        if not tmpl:
            raise DatasetError(f"{self.root}/meta/info.json lacks 'video_path' but {camera!r} is a video feature")
        if self.version == "v3.0":
            r = self._ep_rows[i]
            rel = tmpl.format(video_key=camera, chunk_index=int(r[f"videos/{camera}/chunk_index"]),
                              file_index=int(r[f"videos/{camera}/file_index"]))
            return self.root / rel, float(r[f"videos/{camera}/from_timestamp"])
        rel = tmpl.format(episode_chunk=i // self._chunks_size, video_key=camera, episode_index=i)
        return self.root / rel, 0.0

    def missing_files(self, episodes: Sequence[int] | None = None) -> dict[int, list[str]]:
        """Episodes whose data or video files are absent: {episode: [relative paths]} (cheap: stat only)."""
        out: dict[int, list[str]] = {}
        for i in self.episode_indices if episodes is None else episodes:
            paths = [self._data_file(i)]
            paths += [self._video_file(i, c)[0] for c in self.cameras if self.features[c]["dtype"] == "video"]
            gone = [str(p.relative_to(self.root)) for p in paths if not p.exists()]
            if gone:
                out[i] = gone
        return out

    def available_episodes(self) -> list[int]:
        """Episodes whose files are all present."""
        missing = self.missing_files()
        return [i for i in self.episode_indices if i not in missing]

    def _reset_after_fork(self) -> None:
        # Decoders opened before a fork (DataLoader workers) must neither be used nor freed in
        # the child: freeing one joins codec threads that only exist in the parent and hangs.
        # Keep them referenced, untouched, and open fresh ones.
        if os.getpid() != self._pid:
            self._inherited.append(self._videos)
            self._videos = OrderedDict()
            self._tables = OrderedDict()
            self._pid = os.getpid()

    def _table(self, path: Path, columns: list[str]) -> pa.Table:
        self._reset_after_fork()
        t = self._tables.get(path)
        if t is None:
            t = read_parquet(path, columns)
            self._tables[path] = t
            while len(self._tables) > self._cache_files:
                self._tables.popitem(last=False)
        else:
            self._tables.move_to_end(path)
        return t

    def _columns(self) -> list[str]:
        cols = [ACTION] + ([STATE] if STATE in self.features else [])
        cols += [c for c in (*_LOW_DIM_COLUMNS, *OUTCOME_COLUMNS) if c in self.features]
        return cols

    # -- episodes and frames -----------------------------------------------------------------
    def _episode_table(self, i: int) -> tuple[pa.Table, Path]:
        path = self._data_file(i)
        if not path.exists():
            raise DatasetError(
                f"episode {i}: data file {path.relative_to(self.root)} is missing in {self.root}. Download/copy "
                "the complete dataset, or use only the episodes present (ds.available_episodes(); "
                "ChunkDataset(..., on_bad_episode='exclude') counts and reports the others)"
            )
        t = self._table(path, self._columns())
        if self.version == "v3.0":
            r = self._ep_rows[i]
            start, stop = int(r["dataset_from_index"]), int(r["dataset_to_index"])
            first = t.column("index")[0].as_py() if "index" in t.column_names and len(t) else 0
            t = t.slice(start - first, stop - start)
            if len(t) != stop - start or (
                "episode_index" in t.column_names and len(t) and
                (t.column("episode_index")[0].as_py() != i or t.column("episode_index")[-1].as_py() != i)
            ):
                raise DatasetError(
                    f"episode {i}: rows {start}..{stop} of {path} do not belong to episode {i}; meta/episodes "
                    "does not match the data file: regenerate the metadata"
                )
        return t, path

    def episode(self, i: int) -> Episode:
        """Actions, states, task and timestamps of episode i (validated: shapes, length, finite values)."""
        t, path = self._episode_table(i)
        where = f"episode {i} ({path})"
        if len(t) != self._lengths[i]:
            raise DatasetError(
                f"{where}: has {len(t)} rows but the episode metadata says length {self._lengths[i]}; the file "
                "is truncated or the metadata is stale: regenerate it"
            )
        actions = column_to_array(t.column(ACTION), self.action_dim, f"{where} column 'action'")
        _check_finite(actions, f"{where} actions")
        states = None
        if STATE in self.features:
            states = column_to_array(t.column(STATE), self.state_dim, f"{where} column 'observation.state'")
            _check_finite(states, f"{where} states")
        if "timestamp" in t.column_names:
            ts = t.column("timestamp").to_numpy().astype(np.float64)
        else:
            ts = np.arange(len(t)) / self.fps
        task_idx = t.column("task_index").to_numpy() if "task_index" in t.column_names else None
        ep_tasks = list(self._ep_tasks.get(i) or [])
        if task_idx is not None and len(task_idx):
            unknown = set(np.unique(task_idx).tolist()) - set(self.tasks)
            if unknown:
                raise DatasetError(f"{where}: task_index {sorted(unknown)} not in the tasks table; regenerate meta")
            if not ep_tasks:
                ep_tasks = [self.tasks[int(k)] for k in dict.fromkeys(task_idx.tolist())]
        task = ep_tasks[0] if ep_tasks else (self.tasks[int(task_idx[0])] if task_idx is not None and len(task_idx) else "")
        outcomes = {c: t.column(c).to_numpy(zero_copy_only=False).reshape(-1) for c in OUTCOME_COLUMNS
                    if c in t.column_names}
        return Episode(index=i, length=len(t), actions=actions, states=states, task=task, timestamps=ts,
                       task_indices=task_idx, tasks=ep_tasks, outcomes=outcomes)

    def _video(self, path: Path) -> VideoReader:
        self._reset_after_fork()
        r = self._videos.get(path)
        if r is None:
            r = VideoReader(path)
            self._videos[path] = r
            while len(self._videos) > self._cache_videos:
                self._videos.popitem(last=False)[1].close()
        else:
            self._videos.move_to_end(path)
        return r

    def frames(self, i: int, camera: str, indices: Sequence[int], timestamps: np.ndarray | None = None) -> np.ndarray:
        """Frames (n, H, W, 3) uint8 of episode i, camera key ``camera``, at frame ``indices``.

        ``timestamps``: the episode's timestamps if the caller has them (saves a parquet read).
        """
        if camera not in self.cameras:
            raise DatasetError(f"unknown camera {camera!r} in {self.root}; it has {list(self.cameras)}")
        self._check_episode(i)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = self._lengths[i]
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise DatasetError(f"episode {i} has {n} frames; frame index {int(idx.max() if idx.max() >= n else idx.min())} is out of range")
        if self.features[camera]["dtype"] == "image":
            return self._image_frames(i, camera, idx)
        path, start = self._video_file(i, camera)
        if not path.exists():
            raise DatasetError(
                f"episode {i}: video file {path.relative_to(self.root)} is missing in {self.root}. Download/copy "
                "the complete dataset, or use only the episodes present (ds.available_episodes())"
            )
        if timestamps is None:
            t, _ = self._episode_table(i)
            timestamps = (t.column("timestamp").to_numpy().astype(np.float64) if "timestamp" in t.column_names
                          else np.arange(n) / self.fps)
        frames = self._video(path).frames_at(start + timestamps[idx])
        h, w = self.cameras[camera]
        if frames.shape[1:3] != (h, w):
            raise DatasetError(
                f"{path}: frames are {frames.shape[2]}x{frames.shape[1]} but meta/info.json says {w}x{h} for "
                f"{camera!r}; fix info.json or re-encode the video"
            )
        return frames

    def frame(self, i: int, t: int, camera: str) -> np.ndarray:
        """One frame (H, W, 3) uint8."""
        return self.frames(i, camera, [t])[0]

    def _image_frames(self, i: int, camera: str, idx: np.ndarray) -> np.ndarray:
        from ...images import decode_stored_image

        path = self._data_file(i)
        t, _ = self._episode_table(i)
        tab = read_parquet(path, [camera]) if camera not in t.column_names else t
        if self.version == "v3.0":
            r = self._ep_rows[i]
            first = self._table(path, self._columns()).column("index")[0].as_py()
            tab = tab.slice(int(r["dataset_from_index"]) - first, self._lengths[i])
        col = tab.column(camera)
        out = []
        for k in idx.tolist():
            v = col[k].as_py()
            data = v.get("bytes") if isinstance(v, dict) else v
            if data is None and isinstance(v, dict) and v.get("path"):
                data = (self.root / v["path"]).read_bytes()
            out.append(decode_stored_image(data, f"{path}: episode {i} {camera} frame {k}"))
        return np.stack(out)

    # -- statistics --------------------------------------------------------------------------
    def raw_stats(self) -> tuple[dict[str, dict[str, np.ndarray]], str]:
        """Whatever statistics the metadata holds, per feature, and where they came from.

        meta/stats.json if present; otherwise an aggregate of the per-episode statistics
        (mean/std/min/max only: quantiles do not aggregate exactly).
        """
        p = self.root / "meta" / "stats.json"
        if p.exists():
            d = read_json(p)
            return {f: _stats_from_meta(v, f"{p} feature {f!r}") for f, v in d.items() if isinstance(v, dict)}, "meta/stats.json"
        if self._raw_ep_stats:
            out = {}
            for feat in (ACTION, STATE):
                per = [s[feat] for s in self._raw_ep_stats.values() if feat in s]
                per = [_stats_from_meta(s, f"episode statistics of {feat!r}") for s in per]
                per = [s for s in per if all(k in s for k in ("mean", "std", "min", "max", "count"))]
                if per:
                    out[feat] = _stats.aggregate(per)
            src = "meta/episodes_stats.jsonl" if self.version != "v3.0" else "meta/episodes (stats/ columns)"
            return out, f"aggregated from {src} ({len(self._raw_ep_stats)} episodes)"
        return {}, "none in the metadata"

    @property
    def stats(self) -> dict[str, Stats]:
        """Complete statistics (incl. q01/q99) of 'action' and 'observation.state' from the metadata.

        A feature whose metadata lacks any of mean/std/min/max/q01/q99 is absent here; compute it with
        ``vla.data.stats.compute_stats(ds)`` (streaming; ``embodiment_from_dataset`` does so automatically).
        """
        if self._stats is None:
            raw, src = self.raw_stats()
            out = {}
            for feat in (ACTION, STATE):
                d = raw.get(feat)
                if d is None or not all(k in d for k in STAT_KEYS):
                    continue
                try:
                    out[feat] = Stats(**{k: np.asarray(d[k], np.float64).reshape(-1) for k in STAT_KEYS},
                                      count=int(np.asarray(d.get("count", [0])).reshape(-1)[0]))
                except Exception as e:  # ConfigError from Stats validation: name the file
                    raise DatasetError(f"{self.root} {src}: statistics of {feat!r} are invalid: {e}") from e
                dim = self.action_dim if feat == ACTION else self.state_dim
                if out[feat].dim != dim:
                    raise DatasetError(
                        f"{self.root} {src}: statistics of {feat!r} have {out[feat].dim} dims, the feature has {dim}; "
                        "recompute them"
                    )
            self._stats = out
        return self._stats

    def __getstate__(self) -> dict:
        # Picklable for spawn-started DataLoader workers: open decoders and cached tables stay behind.
        state = dict(self.__dict__)
        state.update(_videos=OrderedDict(), _tables=OrderedDict(), _inherited=[], _pid=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def close(self) -> None:
        for r in self._videos.values():
            r.close()
        self._videos.clear()
        self._tables.clear()

    def __repr__(self) -> str:
        return (f"LeRobotDataset({str(self.root)!r}, version={self.version}, episodes={self.num_episodes}, "
                f"frames={self.num_frames}, fps={self.fps:g}, cameras={list(self.cameras)})")
