"""Client retry policy against a real (stdlib) HTTP server that answers a scripted status sequence."""

import asyncio
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest

from vla.serving import AsyncVLAClient, RequestRejected, ServerError, VLAClient

CHUNK = {"actions": [[0.5, -0.5]], "action_names": ["a", "b"], "embodiment": "arm", "control_hz": 5.0,
         "uncertainty": 0.25, "timings": {"server_ms": 1.0}}


class Scripted:
    """Serves statuses from ``script`` in order (200 answers CHUNK) and records every request."""

    def __init__(self, script):
        self.script, self.requests = list(script), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.requests.append((self.path, self.headers.get("authorization"), body))
                status = outer.script.pop(0) if outer.script else 200
                payload = json.dumps(CHUNK if status == 200 else {"error": "e", "detail": f"status {status}"}).encode()
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted():
    servers = []

    def make(script):
        servers.append(Scripted(script))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


IMG = {"cam": np.zeros((8, 8, 3), np.uint8)}


def test_transient_errors_are_retried_then_succeed(scripted):
    srv = scripted([503, 502, 429, 504])
    with VLAClient(srv.url, token="tok", retries=4, backoff_s=0.001, encoding="raw") as c:
        chunk = c.predict(IMG, "go", "arm", state=[1, 2])
    assert len(srv.requests) == 5
    assert chunk.actions.tolist() == [[0.5, -0.5]] and chunk.control_hz == 5.0 and chunk.timings["roundtrip_ms"] > 0
    path, auth, body = srv.requests[-1]
    sent = json.loads(body)
    assert path == "/predict" and auth == "Bearer tok" and sent["state"] == [1.0, 2.0]
    assert sent["images"]["cam"]["shape"] == [8, 8, 3]


def test_retries_are_bounded_and_4xx_is_never_retried(scripted):
    srv = scripted([503] * 10)
    with VLAClient(srv.url, retries=2, backoff_s=0.001) as c:
        with pytest.raises(ServerError) as e:
            c.predict(IMG, "go", "arm")
    assert e.value.status == 503 and len(srv.requests) == 3 and not isinstance(e.value, RequestRejected)

    srv = scripted([422, 200])
    with VLAClient(srv.url, retries=5, backoff_s=0.001) as c:
        with pytest.raises(RequestRejected) as e:
            c.predict(IMG, "go", "arm")
    assert e.value.status == 422 and e.value.detail == "status 422" and len(srv.requests) == 1


def test_connection_errors_are_retried_with_exponential_backoff():
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with VLAClient(f"http://127.0.0.1:{port}", retries=3, backoff_s=0.02) as c:
        t0 = time.monotonic()
        with pytest.raises(httpx.ConnectError):
            c.predict(IMG, "go", "arm")
        elapsed = time.monotonic() - t0
    # backoff 0.02 * (1 + 2 + 4) * jitter in [0.5, 1.5): between 0.07 and 0.21 s of sleeping
    assert 0.06 < elapsed < 3


def test_async_client_and_multipart(scripted):
    srv = scripted([503])

    async def main():
        async with AsyncVLAClient(srv.url, retries=1, backoff_s=0.001, multipart=True, encoding="png") as c:
            return await c.predict(IMG, "go", "arm", state=[3])

    chunk = asyncio.run(main())
    assert chunk.embodiment == "arm" and len(srv.requests) == 2
    body = srv.requests[-1][2]
    assert b'name="cam"' in body and b"\x89PNG" in body and b'name="state"' in body
    with pytest.raises(ValueError):
        VLAClient(srv.url, multipart=True, encoding="raw")
