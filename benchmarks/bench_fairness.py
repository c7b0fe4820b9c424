"""Another robot's latency while a maximal batch or scan-heavy JPEGs arrive, and the worker's peak RSS.

    python benchmarks/bench_fairness.py                       # tiny checkpoint, before (main) and after
    python benchmarks/bench_fairness.py --model DIR --before <commit> --seconds 15

Runs the same phases against two servers in one run: the serving code of ``--before`` (exported
with ``git archive``) and this tree. One worker, one torch thread each. A robot sends /predict in a
closed loop (i) alone, (ii) while another client sends maximal /predict_batch requests (256
observations) back to back, (iii) while four clients each send a scan-heavy progressive JPEG
(2048x2048, 1000 empty scans, ~40 KB) every second, or as soon as the last one was answered. Then one /predict_batch of 256 blank 2048x2048 PNGs (4.2 MB body), and
one of 16, with the worker's RSS sampled every 10 ms. Prints the CPU model and a markdown table.
"""

from __future__ import annotations

import argparse
import base64
import io
import multiprocessing
import os
import platform
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

from bench_serving import photo
from vla.client.codecs import image_to_json
from vla.local_server import LocalServer

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    return platform.processor() or "unknown CPU"


def export_tree(rev: str, into: Path) -> Path:
    """The package source of ``rev`` as an importable tree (vla/ with serving/ inside, as installed)."""
    data = subprocess.run(["git", "archive", rev, "vla", "serving"], cwd=REPO, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    # as installed: a link, so that vla.serving imports from the tree
    (into / "vla" / "serving").symlink_to(into / "serving", target_is_directory=True)
    return into


class Server(LocalServer):
    """``python -m vla.cli serve`` from ``tree`` (None: this checkout), stopped by its process group."""

    def __init__(self, model: str, root: Path, tree: Path | None):
        env = {"HF_HUB_OFFLINE": "1"}
        if tree is not None:  # found before the editable install of this checkout
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH")) if p)
        super().__init__(model, root, ["--torch-threads", "1", "--max-latency-ms", "60000", "--timeout-s", "120"],
                         cwd=tree or REPO, env=env)
        self.start()
        try:
            self.wait_ready(240)
        except BaseException:
            self.stop()
            raise
        (self.worker,) = [p for p in psutil.Process(self.proc.pid).children(recursive=True)
                          if "_bentoml_impl.worker.service" in " ".join(p.cmdline())]


def robot(url: str, body: dict, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(base_url=url, timeout=300) as client:
        while not stop.is_set():
            t0 = time.perf_counter()
            r = client.post("/predict", json=body)
            r.raise_for_status()
            out.append((time.perf_counter() - t0) * 1e3)


def flood(url: str, path: str, body: bytes, seconds: float, period_s: float, out) -> None:
    """POST ``body`` every ``period_s`` (0: back to back) for ``seconds``, in its own process as
    another machine would; puts (count, statuses, mean seconds) on ``out``."""
    statuses, times = {}, []
    deadline = time.perf_counter() + seconds
    with httpx.Client(base_url=url, timeout=300) as client:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                code = client.post(path, content=body, headers={"content-type": "application/json"}).status_code
            except httpx.HTTPError as e:
                code = type(e).__name__
            times.append(time.perf_counter() - t0)
            statuses[code] = statuses.get(code, 0) + 1
            time.sleep(max(0.0, period_s - (time.perf_counter() - t0)))
    out.put((len(times), statuses, float(np.mean(times)) if times else 0.0))


def phase(url: str, body: dict, seconds: float, attack: tuple[str, bytes, int, float] | None
          ) -> tuple[list[float], list]:
    """The robot's latencies for ``seconds`` while ``attack`` = (path, body, clients, period_s) runs."""
    latencies: list[float] = []
    stop = threading.Event()
    thread = threading.Thread(target=robot, args=(url, body, stop, latencies))
    thread.start()
    others = []
    if attack is None:
        time.sleep(seconds)
    else:
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        procs = [ctx.Process(target=flood, args=(url, attack[0], attack[1], seconds, attack[3], queue))
                 for _ in range(attack[2])]
        for p in procs:
            p.start()
        others = [queue.get() for _ in procs]
        for p in procs:
            p.join()
    stop.set()
    thread.join()
    return latencies, others


def peak_rss(worker: psutil.Process, url: str, body: bytes) -> tuple[float, float, int, float]:
    """(RSS before MB, peak RSS MB, status, seconds) of one /predict_batch."""
    base, peak, done = worker.memory_info().rss, [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], worker.memory_info().rss)
            time.sleep(0.01)

    t = threading.Thread(target=sample)
    t.start()
    t0 = time.perf_counter()
    code = httpx.post(url + "/predict_batch", content=body, headers={"content-type": "application/json"},
                      timeout=600).status_code
    seconds = time.perf_counter() - t0
    done.set()
    t.join()
    return base / 2**20, max(peak[0], base) / 2**20, code, seconds


def run(name: str, model: str, root: Path, tree: Path | None, seconds: float, bomb: bytes) -> list[str]:
    server = Server(model, root / name, tree)
    rows = []
    p = lambda xs, q: float(np.percentile(xs, q)) if xs else float("nan")  # noqa: E731
    try:
        meta = httpx.get(server.url + "/metadata", timeout=30).json()
        emb_name, emb = next(iter(meta["embodiments"].items()))
        images = {cam: image_to_json(photo(224), "jpeg") for cam in emb["cameras"]}
        body = {"instruction": "pick up the cube", "embodiment": emb_name, "images": images}
        if emb.get("state_dim") and meta.get("uses_state"):
            body["state"] = [0.0] * emb["state_dim"]
        import json

        batch = json.dumps({"requests": [body] * 256}).encode()
        jpeg = json.dumps({**body, "images": {cam: base64.b64encode(bomb).decode() for cam in emb["cameras"]}}).encode()
        alone, _ = phase(server.url, body, seconds, None)
        rows.append(f"| {name} | alone | {len(alone)} | {p(alone, 50):.1f} | {p(alone, 99):.1f} | |")
        lat, others = phase(server.url, body, seconds, ("/predict_batch", batch, 1, 0.0))
        rows.append(f"| {name} | maximal /predict_batch (256 obs) back to back | {len(lat)} | {p(lat, 50):.1f} | "
                    f"{p(lat, 99):.1f} | {others[0][0]} batches, {others[0][1]}, {others[0][2]:.1f} s each |")
        png = io.BytesIO()
        Image.new("RGB", (2048, 2048)).save(png, "PNG")
        blank = base64.b64encode(png.getvalue()).decode()
        for n in (16, 256):
            if n == 256 and psutil.virtual_memory().available < 8 << 30:
                rows.append(f"| {name} | {n} blank 2048x2048 PNGs | skipped: under 8 GB free | | | |")
                continue
            mem = json.dumps({"requests": [{**body, "images": {c: blank for c in emb["cameras"]}}] * n}).encode()
            before, peak, code, secs = peak_rss(server.worker, server.url, mem)
            rows.append(f"| {name} | one /predict_batch of {n} blank 2048x2048 PNGs ({len(mem) / 2**20:.1f} MB) | | | | "
                        f"HTTP {code} in {secs:.1f} s; worker RSS {before:.0f} -> peak {peak:.0f} MB |")
        lat, others = phase(server.url, body, seconds, ("/predict", jpeg, 4, 1.0))
        sent = sum(o[0] for o in others)
        statuses = {k: sum(o[1].get(k, 0) for o in others) for o in others for k in o[1]}
        rows.append(f"| {name} | 4 clients, each sending a scan-heavy JPEG every second | {len(lat)} | {p(lat, 50):.1f} | {p(lat, 99):.1f} | "
                    f"{sent} JPEGs, {statuses}, {np.mean([o[2] for o in others]):.2f} s each |")
    finally:
        server.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint directory (default: a tiny checkpoint built here)")
    ap.add_argument("--before", default="main", help="git revision whose serving code is the 'before' server")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each robot phase")
    args = ap.parse_args()

    from vla.testing import make_tiny_checkpoint, scan_heavy_jpeg

    root = Path(tempfile.mkdtemp(prefix="bench_fairness_"))
    model = args.model or str(make_tiny_checkpoint(root / "ckpt", decoding="parallel"))
    rev = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    print(f"CPU: {cpu_model()}; model: {model}; before = {args.before} ({rev}), after = this tree ({head})")
    bomb = scan_heavy_jpeg(2048, 1000)
    rows = []
    rows += run(f"before ({rev})", model, root, export_tree(args.before, root / "before"), args.seconds, bomb)
    rows += run("after", model, root, None, args.seconds, bomb)
    print("\n| server | the robot while | robot requests | robot p50 ms | robot p99 ms | the other client |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
