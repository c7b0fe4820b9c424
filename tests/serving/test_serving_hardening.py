"""The server as an attacker and a BentoML user would try it: a real `vla serve` on 127.0.0.1.

One server for the module: two workers, a token read from a file, a 1 MiB body limit, a 2 s
body-read timeout and 1 s keep-alive. Each past 500 has its regression test here, and a
schemathesis run fuzzes every route of the server's own /docs.json.
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

import httpx
import msgpack
import numpy as np
import pytest

from servers import predict_latencies, start_server, stop_server, wait_ready
from vla.client.codecs import image_to_json

TOKEN = "hardening-token-456"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CAM = "observation.images.corner"
EMOJI_4096 = "\U0001F600" * 4096


def _img(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def _obs(**over) -> dict:
    body = {"instruction": "pick", "embodiment": "sawyer", "images": {CAM: image_to_json(_img(), "png")}}
    body.update(over)
    return body


def _json_numpy(arr: np.ndarray) -> dict:
    return {"__numpy__": base64.b64encode(arr.tobytes()).decode(), "dtype": arr.dtype.str, "shape": list(arr.shape)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from vla.testing import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("hardening")
    ckpt = make_tiny_checkpoint(root / "ckpt", decoding="parallel")
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n")
    proc, url, log = start_server(
        ckpt, root, "--token-file", str(token_file), "--workers", "2", "--torch-threads", "1",
        "--max-body-mb", "1", "--read-timeout-s", "2", "--timeout-keep-alive", "1",
    )
    proc.url, proc.log_path = url, log
    try:
        saw_503 = _poll_ready(url, log, proc)
        proc.saw_503_while_loading = saw_503
        yield proc
    finally:
        stop_server(proc)


def _poll_ready(url: str, log: Path, proc, timeout_s: float = 120) -> bool:
    """Wait for /readyz 200; True when it answered 503 (not a hang) while the workers loaded."""
    saw_503, deadline = False, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            code = httpx.get(f"{url}/readyz", timeout=5).status_code
        except httpx.HTTPError:
            code = None
        saw_503 |= code == 503
        if code == 200:
            return saw_503
        time.sleep(0.1)
    wait_ready(proc, url, log, 1)  # fails with the log
    return saw_503


def post(server, path: str, body=None, *, raw: bytes | None = None, **kw) -> httpx.Response:
    content = raw if raw is not None else json.dumps(body).encode()
    headers = {**AUTH, "content-type": "application/json", **kw.pop("headers", {})}
    return httpx.post(server.url + path, content=content, headers=headers, timeout=30, **kw)


def _ws(server):
    import websockets.sync.client

    ws = websockets.sync.client.connect(server.url.replace("http", "ws"), additional_headers=AUTH, max_size=None)
    msgpack.unpackb(ws.recv(timeout=30))  # the metadata frame
    return ws


def _pack(obs: dict) -> bytes:
    from openpi_client import msgpack_numpy

    return msgpack_numpy.packb(obs)


# --------------------------------------------------------------------- the seven past 500s
HTTP_CASES = {
    "image_placeholder_in_instruction": ("/predict", _obs(instruction="pick <image> up"), 422, "invalid_instruction"),
    "lone_surrogate": ("/predict", None, 400, "invalid_json"),
    "huge_integer_state": ("/predict", None, 422, "invalid_state"),
    "state_as_strings": ("/predict", _obs(state=["1", "2", "3", "4"]), 422, "invalid_state"),
    "state_as_booleans": ("/predict", _obs(state=[True, False, True, False]), 422, "invalid_state"),
    "emoji_instruction": ("/predict", _obs(instruction=EMOJI_4096), 422, "instruction_too_long"),
    "act_shape_1e20": ("/act", {"image": {"__numpy__": "AAAA", "dtype": "|u1", "shape": [10**20, 1, 3]},
                                "instruction": "x", "unnorm_key": "sawyer"}, 400, "invalid_array"),
    "act_array_as_return_chunk": ("/act", {"image": _json_numpy(_img()), "instruction": "x", "unnorm_key": "sawyer",
                                           "return_chunk": _json_numpy(np.ones(3))}, 400, "invalid_request"),
    "act_string_as_return_chunk": ("/act", {"image": _json_numpy(_img()), "instruction": "x", "unnorm_key": "sawyer",
                                            "return_chunk": "false"}, 400, "invalid_request"),
    "act_array_as_unnorm_key": ("/act", {"image": _json_numpy(_img()), "instruction": "x",
                                         "unnorm_key": _json_numpy(np.ones(3))}, 422, "invalid_embodiment"),
    "act_array_as_embodiment": ("/act", {"image": _json_numpy(_img()), "instruction": "x",
                                         "embodiment": _json_numpy(np.ones(2))}, 422, "invalid_embodiment"),
    "act_huge_integer_state": ("/act", None, 422, "invalid_state"),
    "act_lone_surrogate": ("/act", None, 422, "invalid_instruction"),
}


def _raw_case(case: str) -> bytes | None:
    big = "1" + "0" * 400
    if case == "lone_surrogate":
        return json.dumps(_obs()).replace('"pick"', '"\\ud800 pick"').encode()
    if case == "huge_integer_state":
        return json.dumps(_obs(state=[0, 0, 0, 0])).replace("[0, 0, 0, 0]", f"[{big}, 0, 0, 0]").encode()
    act = {"image": _json_numpy(_img()), "instruction": "pick", "unnorm_key": "sawyer", "state": [0, 0, 0, 0]}
    if case == "act_huge_integer_state":
        return json.dumps(act).replace("[0, 0, 0, 0]", f"[{big}, 0, 0, 0]").encode()
    if case == "act_lone_surrogate":
        return json.dumps(act).replace('"pick"', '"\\ud800 pick"').encode()
    return None


@pytest.mark.parametrize("case", sorted(HTTP_CASES))
def test_malformed_input_answers_4xx_json(server, case):
    path, body, status, code = HTTP_CASES[case]
    t0 = time.perf_counter()
    r = post(server, path, body, raw=_raw_case(case))
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error", "detail"} and r.json()["error"] == code, r.json()
    assert time.perf_counter() - t0 < 5  # refused, not computed


def test_multipart_state_with_huge_integer_answers_422(server):
    from vla.client.codecs import encode_image

    r = httpx.post(server.url + "/predict", headers=AUTH, timeout=30,
                   files={CAM: ("c.png", encode_image(_img(), "png"), "image/png")},
                   data={"instruction": "pick", "embodiment": "sawyer", "state": "[1" + "0" * 400 + ", 0, 0, 0]"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_state", r.text


def test_websocket_null_joint_position_and_reserved_tokens_keep_the_connection(server):
    with _ws(server) as ws:
        ws.send(_pack({"observation/image": _img(), "prompt": "pick", "embodiment": "sawyer",
                       "observation/joint_position": None, "observation/gripper_position": np.zeros(1)}))
        reply = ws.recv(timeout=30)
        assert isinstance(reply, str) and "422 invalid_state" in reply and "null" in reply
        ws.send(_pack({"observation/image": _img(), "prompt": "pick <image> up", "embodiment": "sawyer"}))
        assert "invalid_instruction" in ws.recv(timeout=30)
        ws.send(_pack({"observation/image": _img(), "prompt": "pick", "embodiment": np.ones(2)}))
        assert "invalid_embodiment" in ws.recv(timeout=30)
        ws.send(_pack({"observation/image": _img(), "prompt": "pick", "embodiment": "sawyer"}))
        assert msgpack.unpackb(ws.recv(timeout=30), strict_map_key=False)  # still serving


def test_websocket_frame_limit_follows_max_body_mb(server):
    with _ws(server) as ws:
        ws.send(b"\x00" * (2 << 20))  # 2 MiB > --max-body-mb 1
        reply = ws.recv(timeout=30)
        assert isinstance(reply, str) and "413 payload_too_large" in reply and str(1 << 20) in reply
        ws.send(_pack({"observation/image": _img(), "prompt": "pick", "embodiment": "sawyer"}))
        assert not isinstance(ws.recv(timeout=30), str)


# ------------------------------------------------------------------ no request stalls the rest
def _latencies(server, n: int, stop: threading.Event | None = None) -> list[float]:
    return predict_latencies(server.url, _obs(), n, stop, AUTH)


def test_emoji_instruction_is_refused_in_milliseconds_while_another_robot_is_served(server):
    baseline = statistics.median(_latencies(server, 20))
    stop, during = threading.Event(), []
    robot = threading.Thread(target=lambda: during.extend(_latencies(server, 20, stop)))
    robot.start()
    refusals = []
    for _ in range(10):
        t0 = time.perf_counter()
        r = post(server, "/predict", _obs(instruction=EMOJI_4096))
        refusals.append(time.perf_counter() - t0)
        assert r.status_code == 422 and "the limit is" in r.json()["detail"], r.text
    stop.set()
    robot.join(60)
    assert statistics.median(refusals) < 0.5, refusals
    assert statistics.median(during) < 3 * baseline + 0.05, (baseline, statistics.median(during))


def _metric(text: str, name: str, labels: str = "") -> float:
    """Sum of a Prometheus counter over the series whose labels include ``labels`` (k="v",...)."""
    import re

    pattern = rf"^{name}(?:{{([^}}]*)}})? ([0-9.e+-]+)$"
    return sum(float(v) for lab, v in re.findall(pattern, text, re.M) if all(p in lab for p in labels.split(",") if p))


def test_expired_requests_are_never_started_and_a_batch_too_slow_for_its_deadline_is_refused(tmp_path):
    """Work that cannot start within --max-latency-ms is answered 503 (with Retry-After) and dropped;
    once the server has measured its speed, a batch that cannot make it is refused up front."""
    from vla.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", decoding="parallel")
    proc, url, log = start_server(ckpt, tmp_path, "--max-batch-size", "1", "--torch-threads", "1",
                                  "--max-latency-ms", "300")  # the last --max-latency-ms wins
    try:
        wait_ready(proc, url, log)
        obs = _obs()
        t0 = time.perf_counter()
        r = httpx.post(f"{url}/predict_batch", json={"requests": [obs] * 256}, timeout=60)
        refused_after = time.perf_counter() - t0
        assert r.status_code == 503 and r.json()["error"] == "overloaded", r.text
        assert r.headers["retry-after"].isdigit()
        time.sleep(1.0)
        ran = _metric(httpx.get(f"{url}/metrics").text, "vla_batched_requests_total")
        assert ran < 256 / 2, f"{ran} of 256 expired requests still ran"
        t1 = time.perf_counter()
        r = httpx.post(f"{url}/predict_batch", json={"requests": [obs] * 256}, timeout=60)
        assert r.status_code == 413 and r.json()["error"] == "batch_too_slow", r.text
        assert "--max-latency-ms" in r.json()["detail"] and "at most" in r.json()["detail"]
        assert httpx.post(f"{url}/predict", json=obs, timeout=30).status_code == 200
        assert time.perf_counter() - t1 < 2.0 and refused_after < 5
    finally:
        stop_server(proc)


# ------------------------------------------------------------------------- connections
def test_slow_body_times_out_with_408_and_idle_keep_alive_closes(server):
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode())
        t0 = time.perf_counter()
        reply = b""
        while b"request_timeout" not in reply and (chunk := s.recv(65536)):
            reply += chunk
        assert b" 408 " in reply.split(b"\r\n")[0] and b"request_timeout" in reply, reply
        assert 1.5 < time.perf_counter() - t0 < 6
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        t0, reply = time.perf_counter(), b""
        while chunk := s.recv(65536):  # ends when the server closes the idle keep-alive connection
            reply += chunk
        assert b" 200 " in reply and time.perf_counter() - t0 < 5


def test_token_from_a_file_is_not_on_any_command_line(server):
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert TOKEN not in out
    assert httpx.post(server.url + "/metadata").status_code == 401
    assert httpx.post(server.url + "/metadata", headers=AUTH).status_code == 200


def test_token_on_the_command_line_warns(capsys):
    from vla.commands.serve import build_parser, settings_from_args

    assert settings_from_args(build_parser().parse_args(["--token", "abc"])).token == "abc"
    assert "visible to every user in `ps`" in capsys.readouterr().err


# ---------------------------------------------------------------------------- probes
def test_readyz_is_503_while_loading_and_while_a_worker_is_down(server):
    assert server.saw_503_while_loading
    import psutil

    workers = [p for p in psutil.Process(server.pid).children(recursive=True)
               if "_bentoml_impl.worker.service" in " ".join(p.cmdline())]
    assert len(workers) == 2, workers
    workers[0].send_signal(signal.SIGKILL)
    codes, deadline = [], time.monotonic() + 240  # the replacement imports torch and loads the model
    while time.monotonic() < deadline:
        codes.append(httpx.get(server.url + "/readyz", timeout=15).status_code)  # never hangs
        if 503 in codes and codes[-1] == 200:
            break
        time.sleep(0.1)
    assert 503 in codes and codes[-1] == 200, codes  # down, restarted, loaded


def test_metrics_label_refusals_with_the_embodiment_they_named(server):
    post(server, "/predict", _obs(state=[1.0, 2.0]))  # sawyer needs 4 values
    post(server, "/predict", _obs(embodiment="spot"))
    metrics = httpx.get(server.url + "/metrics", headers=AUTH).text
    assert _metric(metrics, "vla_requests_total", 'embodiment="sawyer",route="predict",status="422"') >= 1
    assert _metric(metrics, "vla_requests_total", 'embodiment="unknown",route="predict",status="422"') >= 1
    assert 'embodiment="invalid"' not in metrics


# ------------------------------------------------------------------------ BentoML as such
def test_docs_json_describes_the_typed_apis_and_act(server):
    spec = httpx.get(server.url + "/docs.json", headers=AUTH).json()
    for path in ("/predict", "/predict_batch", "/metadata", "/predict/upload", "/act"):
        assert "post" in spec["paths"][path], path
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["instruction"]["maxLength"] == 4096 and body["example"]["instruction"]
    assert "example" in spec["paths"]["/act"]["post"]["requestBody"]["content"]["application/json"]
    assert httpx.get(server.url + "/", headers=AUTH).status_code == 200  # the Swagger UI page


def test_bentoml_clients_call_the_typed_apis(server):
    import asyncio

    import bentoml

    obs = _obs()
    with bentoml.SyncHTTPClient(server.url, token=TOKEN) as client:
        chunk = client.predict(**obs)
        batch = client.predict_batch(requests=[obs, obs])
        meta = client.metadata()
    assert np.asarray(chunk["actions"]).shape == (4, 4) and chunk["embodiment"] == "sawyer"
    assert [np.asarray(c["actions"]).shape for c in batch["results"]] == [(4, 4)] * 2
    assert set(meta["embodiments"]) == {"sawyer", "aloha"}
    np.testing.assert_allclose(batch["results"][0]["actions"], chunk["actions"], atol=1e-9)

    async def main():
        async with bentoml.AsyncHTTPClient(server.url, token=TOKEN) as client:
            return await client.predict(**obs)

    np.testing.assert_allclose(asyncio.run(main())["actions"], chunk["actions"], atol=1e-9)


def test_schemathesis_finds_no_server_error_and_answers_match_the_schema(server):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance, response_headers_conformance, response_schema_conformance, status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(server.url + "/docs.json", headers=AUTH)
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in ("/metrics",):
            continue

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            response = case.call(headers=AUTH, timeout=30)
            case.validate_response(response, checks=(
                not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance,
                response_headers_conformance))

        fuzz()
        tested.append(f"{operation.method.upper()} {operation.path}")
    assert {"POST /predict", "POST /predict_batch", "POST /metadata", "POST /act", "POST /predict/upload"} <= set(tested)
    log = server.log_path.read_text()
    assert "Traceback" not in log, log[-3000:]
