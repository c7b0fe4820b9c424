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
from vla.client.codecs import image_to_json

EMOJI_4096 = "\U0001F600" * 4096


def robot_loop(url: str, body: dict, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(base_url=url, timeout=120) as client:
        while not stop.is_set():
            t0 = time.perf_counter()
            r = client.post("/predict", json=body)
            r.raise_for_status()
            out.append((time.perf_counter() - t0) * 1e3)


def attacker(url: str, body: bytes | None, seconds: float, period_s: float, out) -> None:
    """Oversized /predict requests (``body``; None: GET /healthz) every ``period_s`` (0: back to back)
    for ``seconds``; puts (latencies ms, statuses, last detail) on ``out``."""
    times, statuses, detail = [], set(), ""
    deadline = time.perf_counter() + seconds
    with httpx.Client(base_url=url, timeout=120) as client:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            if body is None:
                r = client.get("/healthz")
            else:
                r = client.post("/predict", content=body, headers={"content-type": "application/json"})
                detail = r.json().get("detail", "")
            times.append((time.perf_counter() - t0) * 1e3)
            statuses.add(r.status_code)
            time.sleep(max(0.0, period_s - (time.perf_counter() - t0)))
    out.put((times, sorted(statuses), detail))


def phase(url: str, robot_body: dict, seconds: float, flood: tuple | None) -> tuple[list[float], tuple | None]:
    """The robot's latencies for ``seconds`` while ``flood`` = (body, period_s) runs in another process."""
    latencies: list[float] = []
    stop = threading.Event()
    robot = threading.Thread(target=robot_loop, args=(url, robot_body, stop, latencies))
    robot.start()
    result = None
    if flood is None:
        time.sleep(seconds)
    else:
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=attacker, args=(url, flood[0], seconds, flood[1], queue))
        proc.start()
        result = queue.get()
        proc.join()
    stop.set()
    robot.join()
    return latencies, result


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

        attack = json.dumps({**body, "instruction": EMOJI_4096}).encode()
        phases = {"alone": None, "oversized 1/s": (attack, 1.0), "oversized back to back": (attack, 0.0),
                  "control: GET /healthz back to back": (None, 0.0)}
        results = {name: phase(server.url, body, args.seconds, flood) for name, flood in phases.items()}
    finally:
        server.stop()

    p = lambda xs, q: float(np.percentile(xs, q))  # noqa: E731
    alone = results["alone"][0]
    print("\n| robot while | robot requests | robot p50 ms | robot p99 ms | p50 / alone | other client: requests, status, p50 ms |")
    print("|---|---|---|---|---|---|")
    for name, (lat, other) in results.items():
        extra = "" if other is None else f"{len(other[0])}, {other[1]}, {statistics.median(other[0]):.1f}"
        print(f"| {name} | {len(lat)} | {p(lat, 50):.1f} | {p(lat, 99):.1f} | {p(lat, 50) / p(alone, 50):.2f}x | {extra} |")
    print(f"\nrefusal detail: {results['oversized 1/s'][1][2]}")


if __name__ == "__main__":
    main()
