"""The proxy's plumbing against a real HTTP upstream that echoes what it received: what is
forwarded (path, body, the upstream's credentials instead of the sandbox's), what is
answered 403, how denials are reported, and the TCP forwarder in front of its socket.
The policy itself is test_prefect_scope.py; a real Prefect server and engine are
tests/integration/test_prefect_proxy.py."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from deployments.runtime.prefect_proxy import MAX_REPORTED, PrefectProxy
from deployments.runtime.prefect_scope import JobScope
from deployments.runtime.unix_forward import TcpToUnixForwarder, socket_address

OWN, OTHER = str(uuid.uuid4()), str(uuid.uuid4())
UPSTREAM_AUTH = {"Authorization": "Basic dXBzdHJlYW0="}


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        echoed = {"method": self.command, "path": self.path, "headers": dict(self.headers.items()),
                  "body": body.decode()}
        if self.path.endswith("/artifacts/"):
            echoed["id"] = OTHER  # what a create answers: the id becomes the job's
        raw = json.dumps(echoed).encode()
        self.send_response(201 if self.command == "POST" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("Set-Cookie", "session=upstream")
        self.end_headers()
        self.wfile.write(raw)

    do_GET = do_POST = do_PATCH = answer  # noqa: N815 - stdlib naming

    def log_message(self, *args) -> None:  # noqa: D102 - quiet
        pass


@pytest.fixture
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/prefix/api"
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(upstream, tmp_path) -> Iterator[tuple[PrefectProxy, list[str]]]:
    denials: list[str] = []
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "run" / "prefect.sock"  # longer than AF_UNIX allows
    running = PrefectProxy(deep, upstream, UPSTREAM_AUTH, JobScope(OWN, None, None, None), denials.append)
    running.start()
    yield running, denials
    running.close()


@contextlib.contextmanager
def client(socket_path: Path) -> Iterator[httpx.Client]:
    address, directory = socket_address(socket_path)
    transport = httpx.HTTPTransport(uds=address)
    try:
        with httpx.Client(transport=transport, base_url="http://sandbox/api", timeout=10) as api:
            yield api
    finally:
        if directory is not None:
            os.close(directory)


def test_allowed_requests_reach_the_upstream_with_its_credentials_only(proxy):
    running, denials = proxy
    assert oct(running.socket_path.stat().st_mode & 0o777) == "0o600"
    sandbox_headers = {"Authorization": "Basic c2FuZGJveA==", "Cookie": "a=b", "X-Prefect-Api-Key": "k",
                       "X-Custom": "kept"}
    with client(running.socket_path) as api:
        read = api.get(f"/flow_runs/{OWN}", headers=sandbox_headers)
        logs = api.post("/logs/", json=[{"flow_run_id": OWN, "message": "hi"}])
        again = api.get(f"/flow_runs/{OWN}")  # the same keep-alive connection
    assert read.status_code == again.status_code == 200 and logs.status_code == 201
    echoed = read.json()
    assert echoed["path"] == f"/prefix/api/flow_runs/{OWN}"
    headers = {k.lower(): v for k, v in echoed["headers"].items()}
    assert headers["authorization"] == UPSTREAM_AUTH["Authorization"]
    assert "cookie" not in headers and "x-prefect-api-key" not in headers and headers["x-custom"] == "kept"
    assert "set-cookie" not in read.headers
    assert json.loads(logs.json()["body"]) == [{"flow_run_id": OWN, "message": "hi"}]
    assert denials == []


def test_denied_requests_get_403_and_each_is_reported_once_up_to_a_cap(proxy):
    running, denials = proxy
    with client(running.socket_path) as api:
        answers = [api.get(f"/flow_runs/{OTHER}"), api.delete(f"/flow_runs/{OTHER}"),
                   api.post(f"/flow_runs/{OTHER}/set_state", json={}), api.get("/block_documents/x"),
                   api.get(f"/flow_runs/{OTHER}")]
        flood = [api.get(f"/flow_runs/{uuid.uuid4()}").status_code for _ in range(MAX_REPORTED)]
    assert [a.status_code for a in answers] == [403] * 5 and set(flood) == {403}
    assert answers[0].json() == {"detail": "sandbox: not this job's flow run"}
    running.close()
    assert denials[:4] == [
        f"sandbox: denied GET /api/flow_runs/{OTHER} (not this job's flow run)",
        f"sandbox: denied DELETE /api/flow_runs/{OTHER} (a job cannot delete anything)",
        f"sandbox: denied POST /api/flow_runs/{OTHER}/set_state (not this job's flow run)",
        "sandbox: denied GET /api/block_documents/x (blocks (Secrets, credentials) are not readable from a job)",
    ]
    assert len(denials) == MAX_REPORTED + 1 and denials[-1] == "sandbox: 4 more requests were denied (not listed)"
    assert not running.socket_path.exists()


def test_created_objects_become_the_jobs(proxy):
    running, _ = proxy
    with client(running.socket_path) as api:
        assert api.patch(f"/artifacts/{OTHER}", json={"data": 1}).status_code == 403
        assert api.post("/artifacts/", json={"flow_run_id": OWN, "key": None}).status_code == 201
        assert api.patch(f"/artifacts/{OTHER}", json={"data": 1}).status_code == 200


def test_an_unreachable_upstream_is_a_502(tmp_path):
    unreachable = PrefectProxy(tmp_path / "p.sock", "http://127.0.0.1:9/api", {}, JobScope(OWN, None, None, None),
                               lambda _: None)
    unreachable.start()
    try:
        with client(unreachable.socket_path) as api:
            answer = api.get(f"/flow_runs/{OWN}")
    finally:
        unreachable.close()
    assert answer.status_code == 502 and answer.json()["detail"].startswith("sandbox: the Prefect API cannot be")


def test_the_tcp_forwarder_reaches_the_socket(proxy):
    running, _ = proxy
    forwarder = TcpToUnixForwarder(running.socket_path)
    port = forwarder.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/api") as api:
            assert api.get(f"/flow_runs/{OWN}").json()["path"] == f"/prefix/api/flow_runs/{OWN}"
            assert api.get(f"/flow_runs/{OTHER}").status_code == 403
    finally:
        forwarder.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2)
