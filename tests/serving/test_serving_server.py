"""The real server: ``python -m vla.cli serve`` (-> ``bentoml serve``) on 127.0.0.1 with a tiny checkpoint.

One server for the module (auth on, 1 MiB body limit, 256 px image limit), stopped by PID in the
fixture finalizer. Clients are the real ones: our VLAClient/AsyncVLAClient, openpi-client's
WebsocketClientPolicy, and requests + json_numpy as in OpenVLA's deploy.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from servers import start_server, stop_server, wait_ready
from vla.serving import AsyncVLAClient, RequestRejected, VLAClient
from vla.errors import ConfigError
from vla.commands.serve import main as serve_main

TOKEN = "test-token-123"
REPO = Path(__file__).resolve().parents[2]
SAWYER_CAM = "observation.images.corner"
ALOHA_CAMS = ["observation.images.top", "observation.images.wrist"]


@dataclass
class Server:
    url: str
    port: int
    ckpt: Path
    log: Path

    @property
    def auth(self) -> dict:
        return {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from vla.testing import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("serve")
    ckpt = make_tiny_checkpoint(root / "ckpt", decoding="parallel")
    proc, url, log = start_server(ckpt, root, "--token", TOKEN, "--max-body-mb", "1", "--max-image-side", "256")
    try:
        wait_ready(proc, url, log)
        yield Server(url, int(url.rsplit(":", 1)[1]), ckpt, log)
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def client(server):
    with VLAClient(server.url, token=TOKEN, encoding="png") as c:
        yield c


def _img(seed=0, side=32):
    return np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)


def _png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------ happy paths
def test_json_raw_and_multipart_agree_with_the_policy(server, client):
    from vla.policy import VLAPolicy

    img = _img(1)
    expected = VLAPolicy.from_pretrained(server.ckpt).predict({SAWYER_CAM: img}, "pick up the cube", "sawyer")
    results = {}
    for name, kw in {"json_png": dict(encoding="png"), "json_raw": dict(encoding="raw"),
                     "multipart_png": dict(encoding="png", multipart=True)}.items():
        with VLAClient(server.url, token=TOKEN, **kw) as c:
            results[name] = c.predict({SAWYER_CAM: img}, "pick up the cube", "sawyer", state=[0, 0, 0, 0])
    for name, chunk in results.items():
        assert chunk.actions.shape == (4, 4), name
        np.testing.assert_allclose(chunk.actions, expected.actions, atol=1e-9, err_msg=name)
        assert chunk.action_names == ["dx", "dy", "dz", "grip"] and chunk.control_hz == 10
        assert chunk.embodiment == "sawyer" and np.isfinite(chunk.uncertainty)
        assert {"server_ms", "model_ms", "queue_ms", "roundtrip_ms"} <= set(chunk.timings)
        assert 0 < chunk.timings["model_ms"] <= chunk.timings["server_ms"] <= chunk.timings["roundtrip_ms"]
    with VLAClient(server.url, token=TOKEN, encoding="jpeg") as c:  # lossy, but well-formed
        assert c.predict({SAWYER_CAM: img}, "pick up the cube", "sawyer").actions.shape == (4, 4)


def test_metadata_and_predict_batch(server, client):
    meta = client.metadata()
    assert set(meta["embodiments"]) == {"sawyer", "aloha"}
    assert meta["embodiments"]["aloha"]["cameras"] == ALOHA_CAMS
    assert meta["server"]["max_image_side"] == 256 and meta["server"]["default_embodiment"] is None
    assert meta["dtype"] in ("float32", "bfloat16") and meta["dtype_reason"].startswith("auto: ")  # vla serve --dtype auto
    obs = [{"images": {SAWYER_CAM: _img(i)}, "instruction": "push", "embodiment": "sawyer"} for i in range(3)]
    obs.append({"images": {c: _img(9) for c in ALOHA_CAMS}, "instruction": "hand over", "embodiment": "aloha"})
    chunks = client.predict_batch(obs)
    assert [c.actions.shape for c in chunks] == [(4, 4)] * 3 + [(2, 14)]
    single = client.predict({SAWYER_CAM: _img(0)}, "push", "sawyer")
    np.testing.assert_allclose(chunks[0].actions, single.actions, atol=1e-9)


# ---------------------------------------------------------------------------- bad requests
def _json(body) -> dict:
    return {"content": json.dumps(body).encode(), "headers": {"content-type": "application/json"}}


def _obs(**over):
    from vla.client.codecs import image_to_json

    body = {"instruction": "pick", "embodiment": "sawyer", "images": {SAWYER_CAM: image_to_json(_img(), "png")}}
    body.update(over)
    return body


BAD = {
    "malformed_json": ("/predict", {"content": b'{"instruction": ', "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
    "undecodable_image": ("/predict", _json(_obs(images={SAWYER_CAM: "aGVsbG8gd29ybGQ="})), 400, "invalid_image"),
    "bad_base64": ("/predict", _json(_obs(images={SAWYER_CAM: "***"})), 400, "invalid_base64"),
    "wrong_cameras": ("/predict", _json(_obs(embodiment="aloha")), 422, "wrong_cameras"),
    "unknown_embodiment": ("/predict", _json(_obs(embodiment="spot")), 422, "unknown_embodiment"),
    "missing_embodiment": ("/predict", _json({k: v for k, v in _obs().items() if k != "embodiment"}), 422, "missing_embodiment"),
    "wrong_state_size": ("/predict", _json(_obs(state=[1.0, 2.0])), 422, "invalid_state"),
    "nan_state": ("/predict", {"content": json.dumps(_obs(state=[1, 2, 3, float("nan")])).encode(),
                               "headers": {"content-type": "application/json"}}, 422, "invalid_state"),
    "empty_instruction": ("/predict", _json(_obs(instruction="  ")), 422, "invalid_instruction"),
    "unknown_field": ("/predict", _json(_obs(prompt="x")), 400, "invalid_request"),
    "string_state": ("/predict", _json(_obs(state=["1", "2", "3", "4"])), 422, "invalid_state"),
    "empty_batch": ("/predict_batch", _json({"requests": []}), 400, "empty_batch"),
    "image_too_large": ("/predict", _json(_obs(images={SAWYER_CAM: {"dtype": "uint8", "shape": [300, 300, 3], "data": ""}})), 413, "image_too_large"),
    "unsupported_type": ("/predict", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
    "bad_multipart": ("/predict", {"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=x"}}, 400, None),
    "multipart_garbage_image": ("/predict", {"files": {SAWYER_CAM: ("a.png", b"nope", "image/png")},
                                             "data": {"instruction": "x", "embodiment": "sawyer"}}, 400, "invalid_image"),
    "act_not_json_numpy": ("/act", _json({"image": "not an array", "instruction": "x", "unnorm_key": "sawyer"}), 400, "invalid_base64"),
    "act_missing_image": ("/act", _json({"instruction": "x", "unnorm_key": "sawyer"}), 400, "invalid_request"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_requests_get_4xx_json_naming_the_problem(server, case):
    path, kw, status, code = BAD[case]
    kw = dict(kw)
    kw["headers"] = {**server.auth, **kw.get("headers", {})}
    r = httpx.post(server.url + path, timeout=30, **kw)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"} and body["detail"]
    if code:
        assert body["error"] == code, body


def test_client_raises_the_servers_error_and_does_not_retry_4xx(server):
    with VLAClient(server.url, token=TOKEN, retries=3, backoff_s=5.0) as c:
        t0 = time.monotonic()
        with pytest.raises(RequestRejected) as e:
            c.predict({SAWYER_CAM: _img()}, "pick", "spot")
        assert time.monotonic() - t0 < 4  # no backoff sleeps: 4xx is final
    assert e.value.status == 422 and e.value.code == "unknown_embodiment" and "sawyer" in e.value.detail


def test_auth(server):
    r = httpx.post(server.url + "/predict", **_json(_obs()))
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    r = httpx.get(server.url + "/metadata", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert httpx.get(server.url + "/metrics").status_code == 401
    for probe in ("/healthz", "/livez", "/readyz"):
        assert httpx.get(server.url + probe).status_code == 200
    assert httpx.get(server.url + "/metadata", headers={"Authorization": f"Api-Key {TOKEN}"}).status_code == 200
    with VLAClient(server.url, token="nope") as c:
        with pytest.raises(RequestRejected) as e:
            c.metadata()
    assert e.value.status == 401


def test_body_limit(server):
    big = b"x" * (2 << 20)
    r = httpx.post(server.url + "/predict", content=big, headers={**server.auth, "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"

    def chunked():  # no Content-Length: the limit is enforced while reading
        for _ in range(32):
            yield b"y" * (64 << 10)

    r = httpx.post(server.url + "/predict", content=chunked(), headers={**server.auth, "content-type": "application/json"})
    assert r.status_code == 413 and "1 MiB" in r.json()["detail"]


# ------------------------------------------------------------------- openpi and OpenVLA
def test_openpi_client_round_trip(server, client):
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    policy = WebsocketClientPolicy("127.0.0.1", server.port, api_key=TOKEN)
    meta = policy.get_server_metadata()
    assert set(meta["embodiments"]) == {"sawyer", "aloha"}
    img = _img(3)
    out = policy.infer({"observation/image": img, "observation/state": np.zeros(4, np.float32),
                        "prompt": "pick up the cube", "embodiment": "sawyer"})
    http = client.predict({SAWYER_CAM: img}, "pick up the cube", "sawyer")
    assert out["actions"].shape == (4, 4)
    np.testing.assert_allclose(out["actions"], http.actions, atol=1e-9)
    assert out["action_names"] == ["dx", "dy", "dz", "grip"] and out["server_timing"]["infer_ms"] > 0

    # an error frame is raised by the unchanged client, and the same connection keeps serving
    with pytest.raises(RuntimeError, match="unknown_embodiment"):
        policy.infer({"observation/image": img, "prompt": "x", "embodiment": "spot"})
    with pytest.raises(RuntimeError, match="wrong_cameras"):
        policy.infer({"observation/image": img, "prompt": "x", "embodiment": "aloha"})
    out = policy.infer({"images": {ALOHA_CAMS[0]: img.transpose(2, 0, 1), ALOHA_CAMS[1]: img},  # ALOHA style, CHW
                        "prompt": "hand over", "embodiment": "aloha"})
    assert out["actions"].shape == (2, 14)
    out2 = policy.infer({f"observation/{ALOHA_CAMS[0]}": img, "observation/wrist_image": img,  # LIBERO alias
                         "prompt": "hand over", "embodiment": "aloha"})
    np.testing.assert_allclose(out2["actions"], out["actions"], atol=1e-9)
    assert out["actions"].shape == (2, 14)


def test_openpi_protocol_errors_keep_the_connection(server):
    import websockets.sync.client
    from openpi_client import msgpack_numpy

    with pytest.raises(Exception, match="401"):
        websockets.sync.client.connect(f"ws://127.0.0.1:{server.port}", open_timeout=10)
    with websockets.sync.client.connect(f"ws://127.0.0.1:{server.port}",
                                        additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        msgpack_numpy.unpackb(ws.recv(timeout=10))  # metadata frame
        ws.send(b"\xc1\xc1 not msgpack")
        reply = ws.recv(timeout=10)
        assert isinstance(reply, str) and "invalid_msgpack" in reply
        ws.send("a text frame")
        assert "binary" in ws.recv(timeout=10)
        ws.send(msgpack_numpy.packb({"observation/image": _img(), "prompt": "x", "embodiment": "sawyer"}))
        assert msgpack_numpy.unpackb(ws.recv(timeout=30))["actions"].shape == (4, 4)


def test_openvla_act_like_deploy_py(server, client):
    json_numpy = pytest.importorskip("json_numpy")
    requests = pytest.importorskip("requests")
    img = _img(5)
    http = client.predict({SAWYER_CAM: img}, "open the drawer", "sawyer")
    # What OpenVLA's client does after json_numpy.patch(): numpy arrays json-numpy encoded both ways.
    payload = {"image": img, "instruction": "open the drawer", "unnorm_key": "sawyer"}
    resp = requests.post(f"{server.url}/act", data=json_numpy.dumps(payload), headers={**server.auth,
                         "content-type": "application/json"}, timeout=30)
    action = json_numpy.loads(resp.text)
    assert resp.status_code == 200 and isinstance(action, np.ndarray) and action.shape == (4,)
    np.testing.assert_allclose(action, http.actions[0], atol=1e-9)
    # the double-encoded form and the whole-chunk extension
    resp = requests.post(f"{server.url}/act", json={"encoded": json_numpy.dumps({**payload, "return_chunk": True})},
                         headers=server.auth, timeout=30)
    chunk = json_numpy.loads(resp.json())
    np.testing.assert_allclose(chunk, http.actions, atol=1e-9)


# --------------------------------------------------------------------- load and batching
def _metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))


def test_concurrent_load_is_error_free_and_batched(server):
    before = httpx.get(server.url + "/metrics", headers=server.auth).text
    img = _img(7)

    async def worker(c: AsyncVLAClient, stop: float) -> list:
        out = []
        while time.monotonic() < stop:
            chunk = await c.predict({SAWYER_CAM: img}, "pick up the cube", "sawyer")
            out.append(chunk)
        return out

    async def main() -> list:
        async with AsyncVLAClient(server.url, token=TOKEN, encoding="raw", retries=0) as c:
            stop = time.monotonic() + 3.0
            results = await asyncio.gather(*(worker(c, stop) for _ in range(16)))
        return [chunk for r in results for chunk in r]

    chunks = asyncio.run(main())
    assert len(chunks) >= 16
    first = chunks[0].actions
    for c in chunks:  # same observation: same answer, however it was batched
        assert c.actions.shape == (4, 4) and np.all(np.isfinite(c.actions))
        np.testing.assert_allclose(c.actions, first, atol=1e-6)
    after = httpx.get(server.url + "/metrics", headers=server.auth).text
    calls = _metric(after, "vla_predict_batch_calls_total") - _metric(before, "vla_predict_batch_calls_total")
    served = _metric(after, "vla_batched_requests_total") - _metric(before, "vla_batched_requests_total")
    assert served == len(chunks)
    # how many requests share a call depends on how fast 16 clients send against how fast the tiny model
    # answers (1.4 with other jobs on the 2 cores, 1.5+ on a quiet machine); one per call is no batching
    assert served / calls > 1.2, f"{served} requests in {calls} predict_batch calls: no batching"
    assert max(c.timings["batch_size"] for c in chunks) > 1
    ok = _metric(after, 'vla_requests_total{embodiment="sawyer",route="predict",status="200"}')
    assert ok >= len(chunks)
    assert "vla_request_duration_seconds_bucket" in after


def test_still_serving_after_everything(server, client):
    assert client.predict({SAWYER_CAM: _img()}, "pick", "sawyer").actions.shape == (4, 4)
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]


# ------------------------------------------------------------------------------------ CLI
def test_cli_refuses_a_missing_or_broken_checkpoint_without_starting(capsys, tmp_path):
    assert serve_main(["--model", "/does/not/exist", "--port", "1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert serve_main(["--model", str(tmp_path), "--port", "1"]) == 2  # a directory without vla_config.json
    assert "vla_config.json is missing" in capsys.readouterr().err
    assert serve_main(["--model", "org/model", "--workers", "0"]) == 2
    assert "workers must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad:
        serve_main(["--dtype", "int8"])
    assert bad.value.code == 2 and "argument --dtype: invalid choice: 'int8'" in capsys.readouterr().err
    from vla.serving.settings import ServeSettings

    with pytest.raises(ConfigError, match="dtype must be one of"):
        ServeSettings.from_env({"VLA_DTYPE": "fp8"})


def test_cli_without_model_uses_the_default_policy_or_says_how_to_pass_one(monkeypatch, tmp_path):
    import vla.defaults
    from vla.commands.serve import build_parser, settings_from_args
    from vla.errors import CheckpointError

    args = build_parser().parse_args([])
    assert settings_from_args(args).model == str(vla.defaults.DEFAULT_POLICY_DIR)
    monkeypatch.setattr(vla.defaults, "DEFAULT_POLICY_DIR", tmp_path)  # an install without it
    with pytest.raises(CheckpointError, match="--model"):
        settings_from_args(args)


def test_bentoml_build_succeeds_offline(tmp_path, vla_wheel):
    ctx = tmp_path / "ctx"  # the build context: the wheel at the path serving/bentofile.yaml names
    (ctx / "dist").mkdir(parents=True)
    shutil.copy(vla_wheel, ctx / "dist" / vla_wheel.name)
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "true"}
    out = subprocess.run([sys.executable, "-m", "bentoml", "build", "-f", str(REPO / "serving" / "bentofile.yaml"),
                          "-o", "tag", str(ctx)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (bento,) = [p for p in (tmp_path / "home" / "bentos" / "vla").iterdir() if p.name != "latest"]
    assert (bento / "env" / "python" / "wheels" / vla_wheel.name).is_file()  # installed where the bento runs
    assert "service: vla.serving.service:VLAService" in (bento / "bento.yaml").read_text()
