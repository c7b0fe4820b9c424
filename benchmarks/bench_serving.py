# Over 400 lines: one script per benchmark: the load generator, its scenarios and the report stay together.
"""Serving load benchmark: throughput and latency of the BentoML server on 127.0.0.1.

    python benchmarks/bench_serving.py                       # tiny checkpoint, starts its own servers
    python benchmarks/bench_serving.py --model runs/my_ckpt  # any checkpoint directory
    python benchmarks/bench_serving.py --url http://127.0.0.1:3000 --protocols json  # a running server

For each server configuration (our continuous batching, the server's default; batch 1),
protocol (JSON with a base64 JPEG, multipart JPEG upload, openpi WebSocket with a raw msgpack
array) and number of concurrent clients, closed-loop clients send the same pre-encoded
observation for ``--seconds`` and the client-side latency of every request is recorded; the
servers run at once and are measured interleaved. Incumbents: bare ``policy.predict_batch`` in
this process for overhead; the batch-1 server for batching. Load generator and servers share the
machine's cores, which this benchmark cannot avoid. Beside the client-side p99 it reports the p99
of the time spent inside the server (``timings.server_ms``), which tells a tail made by the server
from one made by the load generator or the network stack.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import re
import socket
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from vla.client.codecs import image_to_json, msgpack_pack  # noqa: E402
from vla.local_server import LocalServer  # noqa: E402
from vla.serving.codecs import msgpack_unpack  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def photo(side: int) -> np.ndarray:
    """A real photo (scikit-image's astronaut) at side x side: realistic PNG/JPEG sizes."""
    try:
        from skimage import data

        img = Image.fromarray(data.astronaut())
    except ImportError:  # smooth synthetic fallback
        y, x = np.mgrid[0:512, 0:512]
        img = Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8))
    return np.asarray(img.resize((side, side), Image.BILINEAR).convert("RGB"))


class ServerProcess(LocalServer):
    """``vla serve`` started and ready; ``log_dir`` also holds this server's own BENTOML_HOME."""

    def __init__(self, model: str, max_batch_size: int, log_dir: Path, extra: list[str]):
        # own BENTOML_HOME: BentoML wipes its prometheus dir at startup (shared = zeroed /metrics)
        super().__init__(model, log_dir, ["--max-batch-size", str(max_batch_size), *extra], cwd=REPO)
        self.start()
        try:
            self.wait_ready(180)
        except BaseException:
            self.stop()
            raise


def metric(url: str, name: str, headers: dict) -> float:
    text = httpx.get(url + "/metrics", headers=headers, timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


# ------------------------------------------------------------------------------ payloads
def payloads(images: dict[str, np.ndarray], instruction: str, embodiment: str, url: str) -> dict:
    """Pre-encoded request bodies (encoding cost is the robot's, not the server's)."""
    obs = {"instruction": instruction, "embodiment": embodiment,
           "images": {c: image_to_json(i, "jpeg", 90) for c, i in images.items()}}
    json_body = json.dumps(obs).encode()
    files = {}
    for cam, img in images.items():
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        files[cam] = (f"{cam}.jpg", buf.getvalue(), "image/jpeg")
    mp = httpx.Request("POST", url, files=files, data={"instruction": instruction, "embodiment": embodiment})
    ws = {"prompt": instruction, "embodiment": embodiment, **{f"observation/{c}": i for c, i in images.items()}}
    return {
        "json": (json_body, {"content-type": "application/json"}),
        "multipart": (mp.read(), {"content-type": mp.headers["content-type"]}),
        "ws": (msgpack_pack(ws), {}),
    }


def payload_sizes(img: np.ndarray) -> list[tuple[str, int]]:
    def enc(fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format=fmt, **kw)
        return buf.getvalue()

    raw, png, jpeg = img.tobytes(), enc("PNG", compress_level=1), enc("JPEG", quality=90)
    return [
        ("raw uint8 (msgpack WebSocket body)", len(msgpack_pack({"i": img}))),
        ("raw array in JSON (base64)", len(json.dumps(image_to_json(img, "raw")))),
        ("PNG bytes (multipart part)", len(png)),
        ("PNG base64 in JSON", len(base64.b64encode(png))),
        ("JPEG q90 bytes (multipart part)", len(jpeg)),
        ("JPEG q90 base64 in JSON", len(base64.b64encode(jpeg))),
        ("raw pixels", len(raw)),
    ]


# --------------------------------------------------------------------------------- load
def _internal_ms(server_ms: float, policy_ms: float | None) -> float:
    return server_ms - policy_ms if policy_ms is not None else float("nan")


async def http_load(url: str, body: bytes, headers: dict, clients: int, seconds: float) -> tuple[list, list, int]:
    """Closed-loop HTTP/1.1 keep-alive clients on raw asyncio streams with a pre-built request.

    A lean client on purpose: on 2 shared cores httpx's per-request cost would be measured
    instead of the server's.
    """
    u = httpx.URL(url)
    head = ["POST /predict HTTP/1.1", f"Host: {u.host}:{u.port}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    lat, internal, errors = [], [], 0

    async def one(reader, writer) -> dict | None:
        writer.write(request)
        await writer.drain()
        status_headers = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", status_headers).group(1))
        payload = await reader.readexactly(length)
        return json.loads(payload) if status_headers[9:12] == b"200" else None

    async def connect(warm: int):
        reader, writer = await asyncio.open_connection(u.host, u.port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(warm):
            await one(reader, writer)
        return reader, writer

    async def worker(conn, stop: float) -> None:
        nonlocal errors
        reader, writer = conn
        try:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                reply = await one(reader, writer)
                if reply is not None and "actions" in reply:
                    lat.append(time.perf_counter() - t0)
                    tm = reply["timings"]
                    internal.append((_internal_ms(tm["server_ms"], tm.get("policy_ms")), tm["server_ms"]))
                else:
                    errors += 1
        finally:
            writer.close()

    await worker(await connect(3), time.perf_counter() + 0.5)  # warm-up (and the dispatcher's own)
    lat.clear(), internal.clear()
    conns = await asyncio.gather(*(connect(1) for _ in range(clients)))  # connection setup is not timed
    stop = time.perf_counter() + seconds
    await asyncio.gather(*(worker(c, stop) for c in conns))
    return lat, internal, errors


async def ws_load(url: str, frame: bytes, headers: dict, clients: int, seconds: float) -> tuple[list, list, int]:
    import websockets.asyncio.client

    lat, internal, errors = [], [], 0
    uri = url.replace("http://", "ws://")
    stop = [0.0]

    async def worker(warm: int, ready: asyncio.Barrier) -> None:
        nonlocal errors
        async with websockets.asyncio.client.connect(uri, additional_headers=headers, max_size=None,
                                                     compression=None) as ws:
            await ws.recv()  # metadata frame
            for _ in range(warm):
                await ws.send(frame)
                await ws.recv()
            await ready.wait()  # connection setup is not timed
            while time.perf_counter() < stop[0]:
                t0 = time.perf_counter()
                await ws.send(frame)
                reply = await ws.recv()
                if isinstance(reply, bytes) and "actions" in (out := msgpack_unpack(reply)):
                    lat.append(time.perf_counter() - t0)
                    server_ms = out["server_timing"]["infer_ms"]
                    internal.append((_internal_ms(server_ms, out["policy_timing"].get("policy_ms")), server_ms))
                else:
                    errors += 1

    stop[0] = time.perf_counter() + 0.5
    await worker(3, asyncio.Barrier(1))
    lat.clear(), internal.clear()
    stop[0] = float("inf")
    ready = asyncio.Barrier(clients + 1)
    tasks = [asyncio.create_task(worker(1, ready)) for _ in range(clients)]
    await ready.wait()
    stop[0] = time.perf_counter() + seconds
    await asyncio.gather(*tasks)
    return lat, internal, errors


def run_load(protocol: str, url: str, body: bytes, headers: dict, clients: int, seconds: float) -> dict:
    fn = ws_load if protocol == "ws" else http_load
    t0 = time.perf_counter()
    lat, internal, errors = asyncio.run(fn(url, body, headers, clients, seconds))
    wall = time.perf_counter() - t0
    lat_ms = np.array(lat) * 1e3
    return {"rps": len(lat) / seconds if lat else 0.0, "p50": float(np.percentile(lat_ms, 50)) if lat else float("nan"),
            "p99": float(np.percentile(lat_ms, 99)) if lat else float("nan"), "n": len(lat), "errors": errors,
            "internal_p50": float(np.nanmedian([i for i, _ in internal])) if internal else float("nan"),
            "server_p99": float(np.percentile([s for _, s in internal], 99)) if internal else float("nan"), "wall": wall}


def bare_policy_ms(model: str, images: dict, instruction: str, embodiment: str, repeats: int,
                   torch_threads: int, batch: int = 1, dtype: str = "auto") -> float:
    """p50 of ``policy.predict_batch`` on ``batch`` copies, called from one worker thread as the
    server calls it. (On this oversubscribed 2-core machine torch's OpenMP pool is several times
    slower driven from the main thread than from a worker thread; timing it from the main thread
    would flatter the server.)"""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from vla.policy import VLAPolicy
    from vla.types import PredictRequest

    if torch_threads:
        torch.set_num_threads(torch_threads)
    policy = VLAPolicy.from_pretrained(model, dtype=dtype)
    reqs = [PredictRequest(images, instruction, embodiment)] * batch
    with ThreadPoolExecutor(1) as pool:
        def once() -> float:
            t0 = time.perf_counter()
            pool.submit(policy.predict_batch, reqs).result()
            return time.perf_counter() - t0

        for _ in range(3):
            once()
        return statistics.median([once() for _ in range(repeats)]) * 1e3


CONFIGS = {"continuous": 32, "off": 1}  # name -> --max-batch-size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="checkpoint directory, or 'tiny' for a tiny test checkpoint")
    ap.add_argument("--decoding", default="parallel", choices=("parallel", "autoregressive"), help="for --model tiny")
    ap.add_argument("--url", default=None, help="benchmark this running server instead of starting servers")
    ap.add_argument("--token", default=os.environ.get("VLA_API_TOKEN"))
    ap.add_argument("--embodiment", default=None, help="default: the checkpoint's first embodiment")
    ap.add_argument("--instruction", default="pick up the cube and place it in the bowl")
    ap.add_argument("--image-side", type=int, default=224)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 32])
    ap.add_argument("--protocols", nargs="+", default=["json", "multipart", "ws"], choices=("json", "multipart", "ws"))
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS),
                    help="servers to start: continuous batching (ours), batch 1")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds per setting; the best is kept")
    ap.add_argument("--repeats", type=int, default=30, help="bare policy repeats")
    ap.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"), help="the servers' --dtype")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch intra-op threads, servers and bare policy alike (0: torch's default)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_serving_"))
    model = args.model
    if model == "tiny" and args.url:
        model = None  # a running server: its model is not known here, so no bare-policy baseline
    elif model == "tiny":
        from vla.testing import make_tiny_checkpoint

        model = str(make_tiny_checkpoint(tmp / "tiny", decoding=args.decoding))
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}

    servers: list[tuple[str, str, ServerProcess | None]] = []
    try:
        if args.url:
            servers.append(("running server", args.url.rstrip("/"), None))
        else:
            for name in args.configs:
                b = CONFIGS[name]
                extra = ["--token", args.token] if args.token else []
                extra += ["--torch-threads", str(args.torch_threads)] if args.torch_threads else []
                extra += ["--dtype", args.dtype]
                (tmp / name).mkdir()
                servers.append((name, (srv := ServerProcess(model, b, tmp / name, extra)).url, srv))
        run_all(args, model, servers, headers)
    finally:
        for _, _, srv in servers:
            if srv is not None:
                srv.stop()


def run_all(args, model: str | None, servers: list, headers: dict) -> None:
    meta = httpx.get(servers[0][1] + "/metadata", headers=headers, timeout=30).json()
    embodiment = args.embodiment or next(iter(meta["embodiments"]))
    cams = meta["embodiments"][embodiment]["cameras"]
    img = photo(args.image_side)
    images = {c: img for c in cams}
    from vla.precision import cpu_capability, cpu_name, matmul_gflops

    import torch

    dtype = getattr(torch, meta.get("dtype", "float32"))
    print(f"CPU: {cpu_name()} | capability: {cpu_capability() or 'unknown'} | matmul peak {meta.get('dtype')} "
          f"{matmul_gflops(dtype, seconds=1.0):.0f} GFLOP/s | servers: {meta.get('dtype')} ({meta.get('dtype_reason')})")
    print(f"model={meta.get('model_id')} backbone={meta.get('backbone')} decoding={meta.get('decoding')} "
          f"embodiment={embodiment} cameras={len(cams)} image={args.image_side}px torch_threads={args.torch_threads}")
    print("\npayload bytes per image (one camera):")
    for name, n in payload_sizes(img):
        print(f"  {name:<38} {n:>9,}")

    local = model is not None and Path(model).is_dir()
    bare = bare16 = None
    if local:
        bare = bare_policy_ms(model, images, args.instruction, embodiment, args.repeats, args.torch_threads)
        bare16 = bare_policy_ms(model, images, args.instruction, embodiment, max(5, args.repeats // 4),
                                args.torch_threads, batch=16)
        print(f"\nbare policy.predict_batch: 1 request p50 {bare:.2f} ms; 16 requests p50 {bare16:.2f} ms "
              f"-> the model's own batching ceiling at 16 is {16 * bare / bare16:.2f}x")
        if meta.get("dtype") != "float32":
            fp32 = bare_policy_ms(model, images, args.instruction, embodiment, args.repeats, args.torch_threads,
                                  dtype="float32")
            print(f"bare policy.predict_batch in float32: p50 {fp32:.2f} ms -> {meta.get('dtype')} is "
                  f"{fp32 / bare:.2f}x faster")

    results: dict[tuple[str, str, int], dict] = {}
    bodies = {label: payloads(images, args.instruction, embodiment, url + "/predict") for label, url, _ in servers}
    for proto in args.protocols:
        for n in args.clients:
            # Interleave the servers and keep each one's best round: the machine is shared and
            # noisy, and alternating exposes every configuration to the same background load.
            for _ in range(args.rounds):
                for label, url, _srv in servers:
                    r = measure(proto, url, bodies[label][proto], headers, n, args.seconds)
                    print(f"{label:<11} {proto:<9} clients={n:<3} {r['rps']:8.1f} req/s  p50 {r['p50']:8.2f} ms  "
                          f"p99 {r['p99']:8.2f} ms (server {r['server_p99']:8.2f})  mean batch {r['batch']:5.2f}  "
                          f"errors {r['errors']}", flush=True)
                    best = results.get((label, proto, n))
                    if best is None or r["rps"] > best["rps"]:
                        results[(label, proto, n)] = r

    burst = {}  # one robot right after a 16-client burst: does the batcher keep adding latency?
    if 16 in args.clients and "ws" in args.protocols:
        for label, url, _srv in servers:
            measure("ws", url, bodies[label]["ws"], headers, 16, args.seconds)
            burst[label] = measure("ws", url, bodies[label]["ws"], headers, 1, args.seconds)
    if local:  # again at the end: keep the better (less disturbed) of the two
        bare = min(bare, bare_policy_ms(model, images, args.instruction, embodiment, args.repeats, args.torch_threads))

    print(f"\nbest of {args.rounds} interleaved rounds of {args.seconds:g} s each:")
    print("\n| server | protocol | clients | req/s | p50 ms | p99 ms | p99 inside the server ms | mean batch | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (label, proto, n), r in results.items():
        print(f"| {label} | {proto} | {n} | {r['rps']:.1f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['server_p99']:.2f} | "
              f"{r['batch']:.2f} | {r['errors']} |")

    labels = [s[0] for s in servers]
    if "off" in labels and 16 in args.clients:
        print("\nbatching ratio at 16 clients (throughput / batch-1 server; goal >= 3x):")
        for label in labels:
            if label == "off":
                continue
            for proto in args.protocols:
                on, off = results[(label, proto, 16)], results[("off", proto, 16)]
                print(f"  {label:<11} {proto:<9} {on['rps']:.1f} / {off['rps']:.1f} = "
                      f"{on['rps'] / max(off['rps'], 1e-9):.2f}x (mean batch {on['batch']:.1f})")
    if bare is not None and 1 in args.clients:
        print("\nserver overhead over bare policy.predict at 1 client (p50; goal <= 5 ms):")
        for label in labels:
            for proto in args.protocols:
                r = results[(label, proto, 1)]
                print(f"  {label:<11} {proto:<9} end-to-end {r['p50']:.2f} - {bare:.2f} = {r['p50'] - bare:+.2f} ms; "
                      f"inside the server (server_ms - policy_ms) {r['internal_p50']:.2f} ms")
    if burst:
        print("\n1 client (ws) right after a 16-client burst:")
        for label, r in burst.items():
            print(f"  {label:<11} p50 {r['p50']:.2f} ms (inside the server {r['internal_p50']:.2f} ms), "
                  f"fresh: {results[(label, 'ws', 1)]['p50']:.2f} ms")


def measure(proto: str, url: str, body_hdr: tuple, headers: dict, n: int, seconds: float) -> dict:
    body, hdr = body_hdr
    calls0 = metric(url, "vla_predict_batch_calls_total", headers)
    reqs0 = metric(url, "vla_batched_requests_total", headers)
    r = run_load(proto, url, body, {**headers, **hdr}, n, seconds)
    calls = metric(url, "vla_predict_batch_calls_total", headers) - calls0
    r["batch"] = (metric(url, "vla_batched_requests_total", headers) - reqs0) / max(calls, 1)
    return r


if __name__ == "__main__":
    main()
