"""Writer for LeRobot datasets v3.0 (default) and v2.1, with small-GOP H.264 or AV1 video.
(Over 400 lines: two on-disk layouts, v3.0 and v2.1, behind one streaming writer.)

The dataset is built in a temporary directory next to ``root`` and renamed into
place by ``close()``, so a crash never leaves a half-written dataset at ``root``.
Memory stays bounded: episodes are streamed to parquet/MP4 as they arrive and
global statistics are accumulated with ``RunningStats``.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ...errors import ConfigError, DatasetError
from ..outcomes import COLUMNS as OUTCOME_COLUMNS
from ..outcomes import FEATURES as OUTCOME_FEATURES
from ..outcomes import Outcomes
from ..stats import QUANTILES, RunningStats, aggregate, exact_stats
from ..video import VideoWriter, check_video_format
from .reader import ACTION, STATE

V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V21_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V21_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
INDEX_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
_IMAGE_STAT_FRAMES = 8  # frames per episode sampled for image statistics (as LeRobot does, cheaply)


def _num(x: float) -> float | int:
    return int(x) if float(x).is_integer() else float(x)


def _json_stats(d: dict[str, np.ndarray]) -> dict[str, list]:
    return {k: np.asarray(v).tolist() for k, v in d.items()}


def _image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel stats of a few sampled, subsampled frames in [0, 1], shaped (3, 1, 1) like LeRobot's."""
    idx = np.unique(np.linspace(0, len(frames) - 1, min(_IMAGE_STAT_FRAMES, len(frames))).round().astype(int))
    step = max(1, max(frames.shape[1:3]) // 64)
    px = frames[idx, ::step, ::step].reshape(-1, 3).astype(np.float64) / 255.0
    r = exact_stats(px)
    out = {k: v.reshape(3, 1, 1) for k, v in r.items() if k != "count"}
    out["count"] = np.array([len(idx)])
    return out


class LeRobotWriter:
    """Writes episodes into a new LeRobot dataset directory.

    >>> with LeRobotWriter("out/ds", fps=10, robot_type="so101", action_names=["x", "y", "z", "grip"],
    ...                    state_names=[], cameras={"observation.images.top": (64, 64)}) as w:
    ...     w.add_episode(actions, None, {"observation.images.top": frames}, task="pick the cube")
    """

    def __init__(
        self,
        root: str | Path,
        *,
        fps: float,
        robot_type: str,
        action_names: list[str],
        state_names: list[str],
        cameras: dict[str, tuple[int, int]],
        version: str = "v3.0",
        codec: str = "h264",
        license: str = "unknown",
        provenance: dict | None = None,
        outcomes: bool = False,
        overwrite: bool = False,
        gop: int = 2,
        crf: int | None = None,
        pix_fmt: str = "yuv420p",
        data_file_size_mb: float = 100,
        video_file_size_mb: float = 500,
        chunks_size: int = 1000,
    ):
        if version not in ("v3.0", "v2.1"):
            raise ConfigError(f"unknown LeRobot version {version!r}; choose 'v3.0' or 'v2.1'")
        check_video_format(codec, pix_fmt)
        if not fps or fps <= 0:
            raise ConfigError(f"fps must be > 0, got {fps}")
        if not action_names:
            raise ConfigError("action_names must name at least one action dimension")
        if len(set(action_names)) != len(action_names) or len(set(state_names)) != len(state_names):
            raise ConfigError("action_names and state_names must not contain duplicates")
        for key, hw in cameras.items():
            if not isinstance(key, str) or "/" in key or len(tuple(hw)) != 2:
                raise ConfigError(f"camera {key!r}: keys are feature names like 'observation.images.top' mapped to (H, W)")
        self.root = Path(root)
        if self.root.exists() and not overwrite:
            raise DatasetError(f"{self.root} already exists: choose another directory or pass overwrite=True "
                               "(--overwrite on the command line)")
        self.fps, self.robot_type, self.version, self.codec = fps, robot_type, version, codec
        self.action_names, self.state_names = list(action_names), list(state_names)
        self.cameras = {k: (int(h), int(w)) for k, (h, w) in cameras.items()}
        self.license, self.provenance = license, dict(provenance or {})
        self.outcomes = bool(outcomes)  # every episode carries next.reward/next.success/next.done/label_source
        self.overwrite, self.gop, self.crf, self.pix_fmt = overwrite, gop, crf, pix_fmt
        self._data_mb, self._video_mb, self._chunks_size = data_file_size_mb, video_file_size_mb, chunks_size
        self._tmp = self.root.parent / f".{self.root.name}.partial-{uuid.uuid4().hex[:8]}"
        self._tmp.mkdir(parents=True)
        self._closed = False
        self._tasks: dict[str, int] = {}
        self._episodes: list[dict[str, Any]] = []  # v2.1 episodes.jsonl rows / v3.0 meta/episodes rows
        self._ep_stats: list[dict[str, Any]] = []
        self._frames = 0
        self._acc = {ACTION: RunningStats()}
        if self.state_names:
            self._acc[STATE] = RunningStats()
        self._acc_index = {k: RunningStats() for k in (*INDEX_FEATURES, *(OUTCOME_COLUMNS if self.outcomes else ()))}
        self._img_stats: dict[str, list[dict]] = {k: [] for k in self.cameras}
        # v3.0 rolling files
        self._data_pos = (0, 0)
        self._data_writer: pq.ParquetWriter | None = None
        self._data_bytes = 0
        self._video_pos = {k: (0, 0) for k in self.cameras}
        self._video_writers: dict[str, VideoWriter] = {}

    # -- schema ------------------------------------------------------------------------------
    def _schema(self) -> pa.Schema:
        fields = [pa.field(ACTION, pa.list_(pa.float32(), len(self.action_names)))]
        if self.state_names:
            fields.append(pa.field(STATE, pa.list_(pa.float32(), len(self.state_names))))
        fields += [
            pa.field("timestamp", pa.float32()),
            pa.field("frame_index", pa.int64()),
            pa.field("episode_index", pa.int64()),
            pa.field("index", pa.int64()),
            pa.field("task_index", pa.int64()),
        ]
        if self.outcomes:
            types = {"float32": pa.float32(), "bool": pa.bool_(), "int64": pa.int64()}
            fields += [pa.field(k, types[OUTCOME_FEATURES[k]["dtype"]]) for k in OUTCOME_COLUMNS]
        return pa.schema(fields)

    def _features(self) -> dict:
        feats: dict[str, Any] = {ACTION: {"dtype": "float32", "shape": [len(self.action_names)], "names": self.action_names}}
        if self.state_names:
            feats[STATE] = {"dtype": "float32", "shape": [len(self.state_names)], "names": self.state_names}
        for key, (h, w) in self.cameras.items():
            feats[key] = {
                "dtype": "video",
                "shape": [h, w, 3],
                "names": ["height", "width", "channels"],
                "info": {
                    "video.height": h, "video.width": w, "video.codec": self.codec, "video.pix_fmt": self.pix_fmt,
                    "video.is_depth_map": False, "video.fps": _num(self.fps), "video.channels": 3, "has_audio": False,
                },
            }
        feats.update(json.loads(json.dumps(INDEX_FEATURES)))
        if self.outcomes:
            feats.update(json.loads(json.dumps(OUTCOME_FEATURES)))
        if self.version == "v3.0":  # v3.0 records the rate on every non-video feature
            for ft in feats.values():
                if ft["dtype"] != "video":
                    ft["fps"] = _num(self.fps)
        return feats

    # -- episodes ----------------------------------------------------------------------------
    def _validate(self, actions, states, images, task) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
        n = len(self._episodes)
        actions = np.asarray(actions, dtype=np.float32)
        if actions.ndim != 2 or actions.shape[1] != len(self.action_names) or len(actions) == 0:
            raise DatasetError(
                f"episode {n}: actions must be (T, {len(self.action_names)}) with T >= 1, got {actions.shape}"
            )
        T = len(actions)
        if not np.all(np.isfinite(actions)):
            t, d = np.argwhere(~np.isfinite(actions))[0]
            raise DatasetError(f"episode {n}: action at frame {t} dim {d} ({self.action_names[d]}) is NaN/inf")
        if self.state_names:
            if states is None:
                raise DatasetError(f"episode {n}: states are required (state_names has {len(self.state_names)} entries)")
            states = np.asarray(states, dtype=np.float32)
            if states.shape != (T, len(self.state_names)):
                raise DatasetError(f"episode {n}: states must be ({T}, {len(self.state_names)}), got {states.shape}")
            if not np.all(np.isfinite(states)):
                raise DatasetError(f"episode {n}: states contain NaN/inf")
        elif states is not None and np.asarray(states).size:
            raise DatasetError(f"episode {n}: states given but the writer was created with state_names=[]")
        else:
            states = None
        if set(images) != set(self.cameras):
            raise DatasetError(
                f"episode {n}: images have cameras {sorted(images)}, the writer expects {sorted(self.cameras)}"
            )
        imgs = {}
        for key, (h, w) in self.cameras.items():
            a = np.asarray(images[key])
            if a.dtype != np.uint8 or a.shape != (T, h, w, 3):
                raise DatasetError(f"episode {n}: images[{key!r}] must be uint8 ({T}, {h}, {w}, 3), got {a.dtype} {a.shape}")
            imgs[key] = a
        if not isinstance(task, str) or not task.strip():
            raise DatasetError(f"episode {n}: task must be a non-empty instruction string, got {task!r}")
        return actions, states, imgs

    def add_episode(self, actions: np.ndarray, states: np.ndarray | None, images: dict[str, np.ndarray], task: str,
                    outcomes: Outcomes | None = None) -> int:
        """Append one episode; returns its episode index.

        ``outcomes`` (reward, success, done, label source per frame) is required when the writer was made with
        ``outcomes=True`` and refused otherwise.
        """
        if self._closed:
            raise DatasetError(f"writer for {self.root} is closed")
        actions, states, images = self._validate(actions, states, images, task)
        ep, T = len(self._episodes), len(actions)
        if self.outcomes != (outcomes is not None):
            raise DatasetError(f"episode {ep}: " + ("outcomes (reward, success, done, label source) are required: the "
                                                    "writer was created with outcomes=True" if self.outcomes else
                                                    "outcomes given but the writer was created with outcomes=False"))
        if outcomes is not None:
            outcomes.check(T, f"episode {ep}")
        task_index = self._tasks.setdefault(task, len(self._tasks))
        cols: dict[str, Any] = {ACTION: pa.FixedSizeListArray.from_arrays(pa.array(actions.reshape(-1)), len(self.action_names))}
        if states is not None:
            cols[STATE] = pa.FixedSizeListArray.from_arrays(pa.array(states.reshape(-1)), len(self.state_names))
        index_cols = {
            "timestamp": (np.arange(T) / self.fps).astype(np.float32),
            "frame_index": np.arange(T, dtype=np.int64),
            "episode_index": np.full(T, ep, np.int64),
            "index": np.arange(self._frames, self._frames + T, dtype=np.int64),
            "task_index": np.full(T, task_index, np.int64),
        }
        if outcomes is not None:
            index_cols.update(zip(OUTCOME_COLUMNS, (outcomes.reward, outcomes.success, outcomes.done,
                                                    outcomes.label_source)))
        cols.update({k: pa.array(v) for k, v in index_cols.items()})
        table = pa.table(cols, schema=self._schema())

        ep_stats: dict[str, dict] = {ACTION: exact_stats(actions)}
        self._acc[ACTION].update(actions, f"episode {ep} actions")
        if states is not None:
            ep_stats[STATE] = exact_stats(states)
            self._acc[STATE].update(states, f"episode {ep} states")
        for k, v in index_cols.items():
            col = v.reshape(-1, 1).astype(np.float64)
            ep_stats[k] = exact_stats(col)
            self._acc_index[k].update(col)
        for key, frames in images.items():
            ep_stats[key] = _image_stats(frames)
            self._img_stats[key].append(ep_stats[key])

        if self.version == "v2.1":
            row = self._write_v21(ep, table, images)
        else:
            row = self._write_v3(ep, table, images)
        row.update({"episode_index": ep, "tasks": [task], "length": T})
        self._episodes.append(row)
        self._ep_stats.append(ep_stats)
        self._frames += T
        return ep

    def _write_v21(self, ep: int, table: pa.Table, images: dict[str, np.ndarray]) -> dict:
        chunk = ep // self._chunks_size
        path = self._tmp / V21_DATA_PATH.format(episode_chunk=chunk, episode_index=ep)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        for key, frames in images.items():
            vpath = self._tmp / V21_VIDEO_PATH.format(episode_chunk=chunk, video_key=key, episode_index=ep)
            h, w = self.cameras[key]
            with VideoWriter(vpath, fps=self.fps, height=h, width=w, codec=self.codec, gop=self.gop, crf=self.crf,
                             pix_fmt=self.pix_fmt) as vw:
                vw.write(frames)
        return {}

    @staticmethod
    def _next_pos(pos: tuple[int, int], chunks_size: int) -> tuple[int, int]:
        chunk, file = pos
        return (chunk + 1, 0) if file + 1 >= chunks_size else (chunk, file + 1)

    def _write_v3(self, ep: int, table: pa.Table, images: dict[str, np.ndarray]) -> dict:
        if self._data_writer is not None and self._data_bytes > self._data_mb * 1e6:
            self._data_writer.close()
            self._data_writer = None
            self._data_pos = self._next_pos(self._data_pos, self._chunks_size)
        if self._data_writer is None:
            c, f = self._data_pos
            path = self._tmp / V3_DATA_PATH.format(chunk_index=c, file_index=f)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data_writer = pq.ParquetWriter(path, self._schema())
            self._data_bytes = 0
        self._data_writer.write_table(table)  # one row group per episode
        self._data_bytes += table.nbytes
        row: dict[str, Any] = {
            "data/chunk_index": self._data_pos[0], "data/file_index": self._data_pos[1],
            "dataset_from_index": self._frames, "dataset_to_index": self._frames + len(table),
        }
        for key, frames in images.items():
            vw = self._video_writers.get(key)
            if vw is not None and vw.size_bytes() > self._video_mb * 1e6:
                vw.close()
                vw = None
                self._video_pos[key] = self._next_pos(self._video_pos[key], self._chunks_size)
            if vw is None:
                c, f = self._video_pos[key]
                h, w = self.cameras[key]
                vw = VideoWriter(self._tmp / V3_VIDEO_PATH.format(video_key=key, chunk_index=c, file_index=f),
                                 fps=self.fps, height=h, width=w, codec=self.codec, gop=self.gop, crf=self.crf,
                                 pix_fmt=self.pix_fmt)
                self._video_writers[key] = vw
            start = vw.frames_written / self.fps
            vw.write(frames)
            c, f = self._video_pos[key]
            row.update({
                f"videos/{key}/chunk_index": c, f"videos/{key}/file_index": f,
                f"videos/{key}/from_timestamp": start, f"videos/{key}/to_timestamp": vw.frames_written / self.fps,
            })
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        return row

    # -- metadata ----------------------------------------------------------------------------
    def _global_stats(self) -> dict[str, dict]:
        out = {}
        for feat, acc in {**self._acc, **self._acc_index}.items():
            if acc.count:
                out[feat] = _json_stats(acc.result())
        for key, per in self._img_stats.items():
            if per:  # images: mean/std/min/max aggregated over the sampled frames of every episode
                out[key] = _json_stats(aggregate(per))
        return out

    def _info(self) -> dict:
        n = len(self._episodes)
        info: dict[str, Any] = {
            "codebase_version": self.version,
            "robot_type": self.robot_type,
            "total_episodes": n,
            "total_frames": self._frames,
            "total_tasks": len(self._tasks),
        }
        if self.version == "v2.1":
            info.update({
                "total_videos": n * len(self.cameras),
                "total_chunks": (n - 1) // self._chunks_size + 1 if n else 0,
                "chunks_size": self._chunks_size,
                "fps": _num(self.fps),
                "splits": {"train": f"0:{n}"},
                "data_path": V21_DATA_PATH,
                "video_path": V21_VIDEO_PATH if self.cameras else None,
            })
        else:
            info.update({
                "chunks_size": self._chunks_size,
                "data_files_size_in_mb": _num(self._data_mb),
                "video_files_size_in_mb": _num(self._video_mb),
                "fps": _num(self.fps),
                "splits": {"train": f"0:{n}"},
                "data_path": V3_DATA_PATH,
                "video_path": V3_VIDEO_PATH if self.cameras else None,
            })
        info["features"] = self._features()
        info["license"] = self.license
        # The writer's recorded name, not an import path: it stays as datasets (and the shipped policy's
        # training record) already carry it, so the same data keeps the same provenance.
        info["provenance"] = {"writer": "vla.data.lerobot_writer", **self.provenance}
        return info

    def _write_meta(self) -> None:
        meta = self._tmp / "meta"
        meta.mkdir(parents=True, exist_ok=True)
        (meta / "info.json").write_text(json.dumps(self._info(), indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
        # meta/stats.json: v3.0's global statistics; for v2.1 an extra (LeRobot aggregates
        # episodes_stats.jsonl instead) that keeps the exact streaming quantiles.
        (meta / "stats.json").write_text(json.dumps(self._global_stats(), indent=4) + "\n", encoding="utf-8")
        tasks = sorted(self._tasks.items(), key=lambda kv: kv[1])
        if self.version == "v2.1":
            with open(meta / "tasks.jsonl", "w", encoding="utf-8") as f:
                for task, i in tasks:
                    f.write(json.dumps({"task_index": i, "task": task}, ensure_ascii=False) + "\n")
            with open(meta / "episodes.jsonl", "w", encoding="utf-8") as f:
                for row in self._episodes:
                    f.write(json.dumps({k: row[k] for k in ("episode_index", "tasks", "length")}, ensure_ascii=False) + "\n")
            with open(meta / "episodes_stats.jsonl", "w", encoding="utf-8") as f:
                for i, st in enumerate(self._ep_stats):
                    f.write(json.dumps({"episode_index": i, "stats": {k: _json_stats(v) for k, v in st.items()}}) + "\n")
            return
        # tasks.parquet: task strings as the pandas index named "task" (what LeRobot reads with pandas).
        pandas_meta = {
            "index_columns": ["task"], "column_indexes": [],
            "columns": [
                {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
                {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
            ],
            "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3",
        }
        t = pa.table({"task_index": pa.array([i for _, i in tasks], pa.int64()), "task": pa.array([s for s, _ in tasks], pa.string())})
        pq.write_table(t.replace_schema_metadata({"pandas": json.dumps(pandas_meta)}), meta / "tasks.parquet")
        rows = []
        for row, st in zip(self._episodes, self._ep_stats):
            r = dict(row)
            for feat, d in st.items():
                for k, v in d.items():
                    r[f"stats/{feat}/{k}"] = np.asarray(v).tolist()
            rows.append(r)
        path = meta / "episodes" / "chunk-000" / "file-000.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), path)

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> Path:
        """Finish files and metadata, then move the dataset into place at ``root``."""
        if self._closed:
            return self.root
        if not self._episodes:
            self.abort()
            raise DatasetError(f"no episodes were added to {self.root}; nothing written")
        try:
            if self._data_writer is not None:
                self._data_writer.close()
            for vw in self._video_writers.values():
                vw.close()
            self._write_meta()
            if self.root.exists():  # only reachable with overwrite=True
                shutil.rmtree(self.root)
            self._tmp.replace(self.root)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return self.root

    def abort(self) -> None:
        """Discard everything written so far."""
        self._closed = True
        for vw in self._video_writers.values():
            try:
                vw.close()
            except Exception:  # already failing; cleanup must not mask the original error
                pass
        if self._data_writer is not None:
            try:
                self._data_writer.close()
            except Exception:
                pass
        shutil.rmtree(self._tmp, ignore_errors=True)

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    def __enter__(self) -> "LeRobotWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


__all__ = ["LeRobotWriter", "QUANTILES"]
