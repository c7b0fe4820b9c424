"""Data-path benchmark: random-access video decode and training-sample throughput.

Compares, in one run:
  1. random frame access: our VideoReader on a small-GOP (2) H.264 file, the same reader on a
     default-GOP (250) file, and a naive decoder that opens the file and decodes from the start
     up to the requested frame (sequential seek);
  2. training samples/s from ChunkDataset (cached parquet + open decoders), without and with
     DataLoader worker processes (num_workers=2), against a naive per-sample path that reads
     the episode parquet and decodes the video from the start every time (and one that opens
     the video and seeks for every sample, without caching).

    .venv/bin/python benchmarks/bench_data.py            # ~1-2 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_data.py --quick    # smaller, for a smoke test
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import av  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from vla.data.lerobot import LeRobotDataset  # noqa: E402
from vla.data.samples import ChunkDataset, collate, embodiment_from_dataset  # noqa: E402
from vla.data.synthetic import smooth_frames, write_synthetic  # noqa: E402
from vla.data.video import VideoReader, encode_video  # noqa: E402


def naive_frame(path: Path, t: float) -> np.ndarray:
    """Open, decode from the first frame until time t (what a simple reader does)."""
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            if f.time >= t - 1e-3:
                return f.to_ndarray(format="rgb24")
    raise RuntimeError("frame not found")


def bench_decode(tmp: Path, frames: int, size: int, queries: int, rng: np.random.Generator) -> None:
    fps = 30
    video = smooth_frames(frames, size, size)
    small = encode_video(tmp / "gop2.mp4", video, fps=fps, gop=2)
    default = encode_video(tmp / "gop250.mp4", video, fps=fps, gop=250)
    av1 = encode_video(tmp / "gop2_av1.mp4", video, fps=fps, gop=2, codec="av1")
    idx = rng.integers(0, frames, queries)
    results = {}
    for name, path in [("ours, H.264 GOP 2", small), ("ours, AV1 GOP 2", av1), ("ours, H.264 GOP 250", default)]:
        with VideoReader(path) as r:
            t0 = time.perf_counter()
            for i in idx:
                r.frame_at(i / fps)
            results[name] = len(idx) / (time.perf_counter() - t0)
    n_naive = max(10, queries // 10)  # the naive path is slow: fewer queries, same distribution
    t0 = time.perf_counter()
    for i in idx[:n_naive]:
        naive_frame(default, i / fps)
    results["naive: open + decode from start, GOP 250"] = n_naive / (time.perf_counter() - t0)
    print(f"\n[1] random-access decode: {frames} frames {size}x{size}, {queries} random frames")
    for k, v in results.items():
        print(f"    {k:<42} {v:9.1f} frames/s  ({1000 / v:7.2f} ms/frame)")
    base = results["naive: open + decode from start, GOP 250"]
    print(f"    ratio ours GOP 2 / naive          : {results['ours, H.264 GOP 2'] / base:7.1f}x")
    print(f"    ratio ours GOP 2 / ours GOP 250   : {results['ours, H.264 GOP 2'] / results['ours, H.264 GOP 250']:7.1f}x")


class NaiveSamples(torch.utils.data.Dataset):
    """Per sample: read the episode parquet, then per camera either decode from the start of the
    video (``seek=False``, naive) or open it and seek to the frame (``seek=True``, like a reader that
    opens the file for every query, e.g. LeRobot's PyAV backend), with no caching between samples."""

    def __init__(self, cd: ChunkDataset, seek: bool = False):
        self.cd, self.ds, self.seek = cd, cd.ds, seek

    def __len__(self) -> int:
        return len(self.cd)

    def __getitem__(self, k: int) -> dict:
        ep, t = self.cd.locate(k)
        H = self.cd.embodiment.chunk_size
        table = pq.read_table(self.ds._data_file(ep))
        acts = np.stack(table.column("action").to_pylist()).astype(np.float32)
        chunk = acts[t : t + H]
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], H - len(chunk), 0)])
        ts = table.column("timestamp").to_numpy()
        images = []
        for cam in self.cd.embodiment.cameras:
            path, start = self.ds._video_file(ep, cam)
            if self.seek:
                with VideoReader(path) as r:
                    images.append(r.frame_at(start + float(ts[t])))
            else:
                images.append(naive_frame(path, start + float(ts[t])))
        return {"images": images, "actions": chunk}


def samples_per_s(dataset, n: int, rng: np.random.Generator, workers: int, batch: int = 16) -> float:
    idx = rng.permutation(len(dataset))[:n].tolist()
    if workers == 0:
        t0 = time.perf_counter()
        for i in idx:
            dataset[i]
        return n / (time.perf_counter() - t0)
    dl = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=idx, num_workers=workers,
                                     collate_fn=collate, persistent_workers=False)
    t0 = time.perf_counter()
    for _ in dl:
        pass
    return n / (time.perf_counter() - t0)


def bench_samples(tmp: Path, episodes: int, length: int, size: int, n: int, rng: np.random.Generator) -> None:
    cams = {"observation.images.top": (size, size), "observation.images.wrist": (size, size)}
    t0 = time.perf_counter()
    root, _ = write_synthetic(tmp / "ds", episodes=episodes, lengths=[length] * episodes, cameras=cams,
                              action_dim=7, state_dim=8, fps=30)
    write_s = time.perf_counter() - t0
    mb = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e6
    ds = LeRobotDataset(root)
    emb = embodiment_from_dataset(ds, "bench", chunk_size=16)
    cd = ChunkDataset(ds, emb)
    naive, reopen = NaiveSamples(cd), NaiveSamples(cd, seek=True)
    print(f"\n[2] training samples: {episodes} episodes x {length} frames, 2 cameras {size}x{size}, chunk 16 "
          f"(LeRobot v3.0 H.264 GOP 2, {mb:.1f} MB, written in {write_s:.1f} s)")
    r = {
        "ChunkDataset, num_workers=0": samples_per_s(cd, n, rng, 0),
        "ChunkDataset, DataLoader num_workers=2": samples_per_s(cd, n, rng, 2),
        "per-sample open + seek, num_workers=0": samples_per_s(reopen, max(20, n // 4), rng, 0),
        "naive per-sample read, num_workers=0": samples_per_s(naive, max(20, n // 8), rng, 0),
        "naive per-sample read, num_workers=2": samples_per_s(naive, max(20, n // 8), rng, 2),
    }
    for k, v in r.items():
        print(f"    {k:<42} {v:9.1f} samples/s")
    print(f"    ratio ours / naive (0 workers)     : {r['ChunkDataset, num_workers=0'] / r['naive per-sample read, num_workers=0']:7.1f}x")
    print(f"    ratio ours / naive (2 workers)     : {r['ChunkDataset, DataLoader num_workers=2'] / r['naive per-sample read, num_workers=2']:7.1f}x")
    print(f"    ratio ours / per-sample open+seek  : {r['ChunkDataset, num_workers=0'] / r['per-sample open + seek, num_workers=0']:7.1f}x")
    print(f"    ratio 2 workers / 0 workers (ours) : {r['ChunkDataset, DataLoader num_workers=2'] / r['ChunkDataset, num_workers=0']:7.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--size", type=int, default=224, help="frame size in pixels")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    torch.set_num_threads(1)
    print(f"bench_data: {os.cpu_count()} CPUs, PyAV {av.__version__}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if a.quick:
            bench_decode(tmp, frames=60, size=64, queries=60, rng=rng)
            bench_samples(tmp, episodes=3, length=30, size=64, n=64, rng=rng)
        else:
            bench_decode(tmp, frames=300, size=a.size, queries=300, rng=rng)
            bench_samples(tmp, episodes=8, length=150, size=a.size, n=512, rng=rng)


if __name__ == "__main__":
    main()
