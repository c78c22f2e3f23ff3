"""A cancelled job's engine is told to abort instead of running (cancelled_start.py), through
the real proxy against a real HTTP upstream that plays the run's current state."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deployments.runtime.prefect_proxy import PrefectProxy
from deployments.runtime.prefect_scope import JobScope
from tests.unit.deployments.runtime.test_prefect_proxy import client

OWN = str(uuid.uuid4())


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state_type = "PENDING"
    proposals: list[str] = []

    def reply(self, status: int, payload: dict) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self.reply(200, {"id": OWN, "state": {"type": type(self).state_type}})

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).proposals.append(self.path)
        self.reply(201, {"status": "ACCEPT", "state": None, "details": {"type": "accept_details"}})

    def log_message(self, *args) -> None:  # noqa: D102 - quiet
        pass


@pytest.fixture
def proxy(tmp_path) -> Iterator[PrefectProxy]:
    Upstream.proposals = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    running = PrefectProxy(tmp_path / "prefect.sock", f"http://127.0.0.1:{server.server_address[1]}/api", {},
                           JobScope(OWN, None, None, None), lambda message: None)
    running.start()
    yield running
    running.close()
    server.shutdown()
    server.server_close()


def propose(proxy: PrefectProxy, state_type: str) -> dict:
    with client(proxy.socket_path) as api:
        response = api.post(f"/flow_runs/{OWN}/set_state", json={"state": {"type": state_type}})
    assert response.status_code in (200, 201), response.text
    return response.json()


@pytest.mark.parametrize("stopped", ["CANCELLED", "CANCELLING"])
def test_running_is_aborted_while_the_run_is_cancelled(proxy, monkeypatch, stopped):
    monkeypatch.setattr(Upstream, "state_type", stopped)
    answer = propose(proxy, "RUNNING")
    assert answer["status"] == "ABORT" and "cancelled" in answer["details"]["reason"]
    assert Upstream.proposals == [], "the proposal never reached Prefect"


def test_other_proposals_and_runs_not_cancelled_go_through(proxy, monkeypatch):
    monkeypatch.setattr(Upstream, "state_type", "PENDING")
    assert propose(proxy, "RUNNING")["status"] == "ACCEPT"
    monkeypatch.setattr(Upstream, "state_type", "CANCELLING")
    assert propose(proxy, "CANCELLED")["status"] == "ACCEPT"  # the engine ending its cancelled run
    assert len(Upstream.proposals) == 2
