"""MCAP -> training arrays: our one-pass reader vs a naive "read everything, then sort" converter.

    python benchmarks/bench_mcap.py                       # 2 min of 30 Hz 320x240 video, ~6 min in all
    python benchmarks/bench_mcap.py --seconds 10 --quick --repeats 1  # smoke test

The recording (written first, with mcap-ros2-support): a 30 Hz bgr8 camera, a 15 Hz JPEG camera,
50 Hz JointState and a 20 Hz Float64MultiArray command; camera pixels are noisy, so chunks
compress about as little as real camera frames do. Both converters produce the same aligned
arrays (checked) on the same control clock:

- naive: decode every message, convert every image to RGB, collect all, sort by stamp, then sweep
  the ticks holding the latest message of each topic;
- ours: ``EpisodeReader`` (one log-time-ordered pass, vectors extracted on arrival, images kept
  encoded, only the frames the ticks hold decoded).

"end to end" adds the LeRobot v3.0 writer (H.264 encoding) to ours.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from vla.data.formats import convert  # noqa: E402
from vla.data.mcap import EpisodeReader, McapFile, McapMapping, find_recordings  # noqa: E402
from vla.data.mcap.synthetic import BagSpec, robot_mapping, write_robot_bag  # noqa: E402
from vla.data.mcap.ros_images import compressed_msg_to_rgb, image_msg_to_rgb  # noqa: E402
from vla.data.resample import NS  # noqa: E402


def naive(path: Path, m: McapMapping) -> dict[str, np.ndarray]:
    """Read and decode everything, sort by stamp, then sweep the ticks."""
    rows = []  # (stamp, topic, value)
    with McapFile(path) as f:
        for topic, msg_type, schema, message in f.messages():
            msg = f.decode(schema, message)
            header = getattr(msg, "header", None)
            stamp = header.stamp.sec * NS + header.stamp.nanosec if header is not None else message.log_time
            if msg_type == "sensor_msgs/Image":
                value = image_msg_to_rgb(msg, m.cameras["observation.images.front"], topic)
            elif msg_type == "sensor_msgs/CompressedImage":
                value = compressed_msg_to_rgb(msg, m.cameras["observation.images.wrist"], topic)
            elif msg_type == "sensor_msgs/JointState":
                value = [msg.position[list(msg.name).index(j)] for j in m.state[0].joints]
            else:
                value = list(msg.data)
            rows.append((stamp, topic, value))
    rows.sort(key=lambda r: r[0])
    topics = {s.topic: k for k, s in m.streams().items()}
    firsts: dict[str, int] = {}
    for stamp, topic, _ in rows:
        firsts.setdefault(topic, stamp)
    start, end = max(firsts.values()), rows[-1][0]
    out: dict[str, list] = {k: [] for k in topics.values()}
    latest: dict[str, object] = {}
    i, k = 0, 0
    while start + round(k * NS / m.fps) <= end:
        tick = start + round(k * NS / m.fps)
        while i < len(rows) and rows[i][0] <= tick:
            latest[rows[i][1]] = rows[i][2]
            i += 1
        for topic, key in topics.items():
            out[key].append(latest[topic])
        k += 1
    return {key: np.asarray(v) for key, v in out.items()}


def ours(path: Path, m: McapMapping):
    reader = EpisodeReader(m)
    (rec,) = find_recordings([path])
    (raw,) = list(reader.episodes(rec))
    (ep,) = reader.align(raw).episodes
    return ep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--size", type=int, nargs=2, default=[240, 320], metavar=("H", "W"))
    ap.add_argument("--fps", type=float, nargs="+", default=[10.0, 30.0], help="control rates to convert at")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per converter (median; alternating)")
    ap.add_argument("--quick", action="store_true", help="skip the end-to-end run")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_mcap_"))
    try:
        t = time.perf_counter()
        path = write_robot_bag(tmp / "bench.mcap", BagSpec(seconds=args.seconds, size=tuple(args.size), noise=True,
                                                           chunk_size=1 << 20))
        with McapFile(path) as f:
            n_msgs = sum(c.count for c in f.channels().values())
        print(f"recording: {args.seconds:.0f} s, {n_msgs} messages, {path.stat().st_size / 1e6:.0f} MB, "
              f"{args.size[1]}x{args.size[0]}; written in {time.perf_counter() - t:.1f} s")
        print(f"{'control Hz':>10} {'converter':>12} {'seconds':>8} {'messages/s':>11} {'frames/s':>9} {'speed-up':>8}")
        for fps in args.fps:
            m = McapMapping.resolve(robot_mapping(fps=fps))
            times: dict[str, list[float]] = {"naive": [], "ours": []}
            for _ in range(args.repeats):  # alternate, so load from other processes hits both alike
                t = time.perf_counter()
                ref = naive(path, m)
                times["naive"].append(time.perf_counter() - t)
                t = time.perf_counter()
                ep = ours(path, m)
                times["ours"].append(time.perf_counter() - t)
            t_naive, t_ours = (statistics.median(times[k]) for k in ("naive", "ours"))
            # same arrays: the comparison is between two correct converters
            assert np.array_equal(ref["state[0]"].astype(np.float32), ep.states)
            assert np.array_equal(ref["action[0]"].astype(np.float32), ep.actions)
            assert np.array_equal(ref["observation.images.front"], ep.images["observation.images.front"])
            assert np.array_equal(ref["observation.images.wrist"], ep.images["observation.images.wrist"])
            frames = len(ep.actions) * len(ep.images)
            for name, secs in (("naive", t_naive), ("ours", t_ours)):
                print(f"{fps:>10g} {name:>12} {secs:>8.2f} {n_msgs / secs:>11,.0f} {frames / secs:>9,.0f} "
                      f"{t_naive / secs:>7.2f}x")
            if not args.quick:
                t = time.perf_counter()
                report = convert([path], tmp / f"ds{fps:g}", mapping=m,
                                 progress=False, license="apache-2.0")
                secs = time.perf_counter() - t
                frames = report.frames_written * len(m.cameras)
                print(f"{fps:>10g} {'end to end':>12} {secs:>8.2f} {n_msgs / secs:>11,.0f} {frames / secs:>9,.0f}"
                      f"      (+ H.264 encoding, LeRobot v3.0)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
