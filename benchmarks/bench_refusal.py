"""One robot's latency while another client floods the server with oversized instructions.

    python benchmarks/bench_refusal.py                    # the shipped default policy
    python benchmarks/bench_refusal.py --model runs/my_ckpt --seconds 20

A robot sends /predict in a closed loop, first alone, then while an attacker (another process, as
it would be another machine) sends the 4096-emoji instruction (about 12k tokens for SmolLM2, more
than its 8,192 positions) back to back. Reports how
fast each oversized request is refused, the robot's p50/p99 in both phases and their ratio (1.0:
the flood costs the robot nothing). Before instructions were limited in tokens, one such request
held the model thread for 45-51 s on the default policy.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from bench_serving import ServerProcess, photo
from serving.codecs import image_to_json

EMOJI_4096 = "\U0001F600" * 4096


def robot_loop(url: str, body: dict, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(base_url=url, timeout=120) as client:
        while not stop.is_set():
            t0 = time.perf_counter()
            r = client.post("/predict", json=body)
            r.raise_for_status()
            out.append((time.perf_counter() - t0) * 1e3)


def attacker(url: str, body: bytes, seconds: float, out) -> None:
    """Back-to-back oversized requests for ``seconds``; sends (latencies ms, statuses, last detail)."""
    times, statuses, detail = [], set(), ""
    deadline = time.perf_counter() + seconds
    with httpx.Client(base_url=url, timeout=120) as client:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            r = client.post("/predict", content=body, headers={"content-type": "application/json"})
            times.append((time.perf_counter() - t0) * 1e3)
            statuses.add(r.status_code)
            detail = r.json().get("detail", "")
    out.put((times, sorted(statuses), detail))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint directory (default: the shipped default policy)")
    ap.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    args = ap.parse_args()

    from vla.defaults import default_policy_path

    model = args.model or str(default_policy_path())
    server = ServerProcess(model, 32, Path(tempfile.mkdtemp(prefix="bench_refusal_")), ["--torch-threads", "1"])
    try:
        meta = httpx.get(server.url + "/metadata", timeout=30).json()
        name, emb = next(iter(meta["embodiments"].items()))
        side = (emb.get("image_size") or [224, 224])[0]
        images = {cam: image_to_json(photo(side), "jpeg") for cam in emb["cameras"]}
        body = {"instruction": "pick up the cube", "embodiment": name, "images": images}
        print(f"model={meta['model_id']} embodiment={name} max_instruction_tokens={meta['server']['max_instruction_tokens']}")

        alone: list[float] = []
        stop = threading.Event()
        robot = threading.Thread(target=robot_loop, args=(server.url, body, stop, alone))
        robot.start()
        time.sleep(args.seconds)
        stop.set()
        robot.join()

        during: list[float] = []
        stop.clear()
        robot = threading.Thread(target=robot_loop, args=(server.url, body, stop, during))
        robot.start()
        attack = json.dumps({**body, "instruction": EMOJI_4096}).encode()
        queue = multiprocessing.get_context("spawn").Queue()
        flood = multiprocessing.get_context("spawn").Process(target=attacker,
                                                             args=(server.url, attack, args.seconds, queue))
        flood.start()
        refusals, statuses, detail = queue.get()
        flood.join()
        stop.set()
        robot.join()
    finally:
        server.stop()

    p = lambda xs, q: float(np.percentile(xs, q))  # noqa: E731
    print(f"\noversized requests: {len(refusals)} answered {statuses}, "
          f"refused in p50 {statistics.median(refusals):.1f} ms, p99 {p(refusals, 99):.1f} ms")
    print(f"  detail: {detail}")
    print("\n| robot | requests | p50 ms | p99 ms |\n|---|---|---|---|")
    print(f"| alone | {len(alone)} | {p(alone, 50):.1f} | {p(alone, 99):.1f} |")
    print(f"| during the flood | {len(during)} | {p(during, 50):.1f} | {p(during, 99):.1f} |")
    print(f"\nrobot p50 during / alone = {p(during, 50) / p(alone, 50):.2f}x")


if __name__ == "__main__":
    main()
