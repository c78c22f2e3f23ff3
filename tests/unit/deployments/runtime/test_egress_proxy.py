"""The egress proxy on real sockets, behind the TCP -> Unix forwarder a sandbox runs, with
the project's local LM as the target: what it forwards and tunnels, what it denies and
how it says so, its caps; and that DSPy's and LiteLLM's real call paths, in a process
with the sandbox's proxy environment, go through it.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import httpx
import pytest

from deployments.runtime.egress_proxy import EgressProxy
from deployments.runtime.forwarder import proxy_environment
from deployments.runtime.unix_forward import TcpToUnixForwarder
from dspy_service.egress_policy import EgressPolicy, JobHosts
from tests.support.polling import wait_until

PREFECT_NO_PROXY = "127.0.0.1:4200,http://127.0.0.1:4200"  # what the sandbox sets


class Proxied:
    """An EgressProxy on a Unix socket and a forwarder to it on 127.0.0.1:<port>."""

    def __init__(self, allow: str, targets: set[tuple[str, int]], **options):
        self.directory = Path(tempfile.mkdtemp(prefix="egress-", dir="/tmp"))
        self.denied: list[str] = []
        self.proxy = EgressProxy(
            self.directory / "egress.sock", EgressPolicy.parse(allow), JobHosts(frozenset(targets)),
            self.denied.append, **options,
        ).start()
        self.forwarder = TcpToUnixForwarder(self.proxy.socket_path)
        self.forwarder.start()
        self.url = f"http://127.0.0.1:{self.forwarder.port}"

    def client(self) -> httpx.Client:
        return httpx.Client(proxy=self.url, timeout=10, trust_env=False)

    def close(self) -> None:
        self.forwarder.close()
        self.proxy.close()


@pytest.fixture
def proxied(local_lm):
    """The local LM is the job's one host, and allow-listed (as `dspy-service up` does)."""
    made = Proxied(f"127.0.0.1:{local_lm.port}", {("127.0.0.1", local_lm.port), ("169.254.169.254", 80)})
    yield made
    made.close()


def raw_exchange(port: int, data: bytes, until: bytes = b"\r\n\r\n") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while until not in received and (chunk := sock.recv(65536)):
            received += chunk
        return received


def test_plain_http_is_forwarded_and_every_request_gets_a_fresh_connection(proxied, local_lm):
    with proxied.client() as client:
        first, second = client.get(f"{local_lm.url[:-3]}/health"), client.get(f"{local_lm.url[:-3]}/health")
        answer = client.post(
            f"{local_lm.url}/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "What is 2+3?"}]},
        )
    assert first.json() == second.json() == {"status": "ok"} and first.headers["connection"] == "close"
    assert answer.status_code == 200 and answer.json()["choices"]
    assert proxied.proxy.allowed[f"127.0.0.1:{local_lm.port}"] == 3 and proxied.denied == []


class EchoHeaders(http.server.BaseHTTPRequestHandler):
    """Answers with the request line and headers it received, as JSON."""

    def do_GET(self):
        body = json.dumps({"line": self.requestline, "headers": dict(self.headers)}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "keep-alive")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_target_gets_origin_form_the_checked_host_and_no_proxy_headers():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EchoHeaders)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    made = Proxied(f"127.0.0.1:{port}", {("127.0.0.1", port)})
    try:
        request = (
            f"GET http://127.0.0.1:{port}/path?q=1 HTTP/1.1\r\nHost: evil.example\r\nProxy-Connection: keep-alive\r\n"
            "Proxy-Authorization: Basic eA==\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\nX-Keep: 2\r\n\r\n"
        ).encode()
        answer = raw_exchange(made.forwarder.port, request, until=b"}}")
    finally:
        made.close()
        server.shutdown()
        server.server_close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and b"Connection: close" in head and b"keep-alive" not in head
    seen = json.loads(body)
    assert seen["line"] == "GET /path?q=1 HTTP/1.1"
    assert seen["headers"] == {"Host": f"127.0.0.1:{port}", "X-Keep": "2", "Connection": "close"}


def test_connect_tunnels_bytes_both_ways(proxied, local_lm):
    request = (
        f"CONNECT 127.0.0.1:{local_lm.port} HTTP/1.1\r\nHost: 127.0.0.1:{local_lm.port}\r\n\r\n"
        "GET /health HTTP/1.1\r\nHost: lm\r\nConnection: close\r\n\r\n"
    ).encode()
    answer = raw_exchange(proxied.forwarder.port, request, until=b'"ok"}')
    assert answer.startswith(b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.") and b'{"status": "ok"}' in answer


def test_targets_outside_the_job_and_metadata_are_denied_once_reported_each(proxied, local_lm):
    with proxied.client() as client:
        prefect = [client.get("http://127.0.0.1:4200/api/flow_runs/x") for _ in range(2)]
        metadata = client.get("http://169.254.169.254/latest/meta-data")  # a job host, but always denied
        with pytest.raises(httpx.ProxyError, match="403 Egress denied: .*not one of this job's hosts"):
            client.get("https://api.openai.com/v1/models")
    assert [r.status_code for r in prefect] == [403, 403] and "not one of this job's hosts" in prefect[0].text
    assert metadata.status_code == 403 and "always denied" in metadata.reason_phrase
    assert proxied.denied == [
        "sandbox: denied GET 127.0.0.1:4200 (127.0.0.1:4200 is not one of this job's hosts (its models' base_url "
        "or provider, its dataset_source))",
        "sandbox: denied GET 169.254.169.254:80 (169.254.169.254:80 is a link-local or cloud metadata address "
        "(always denied))",
        "sandbox: denied CONNECT api.openai.com:443 (api.openai.com:443 is not one of this job's hosts (its models' "
        "base_url or provider, its dataset_source))",
    ]
    assert not proxied.proxy.allowed


def test_names_are_resolved_by_the_proxy_and_every_address_checked(local_lm):
    """`localhost` is the job's host; it resolves to loopback, allowed by address or by name only."""
    answers = {}
    for allow in ("", f"127.0.0.1:{local_lm.port}", f"localhost:{local_lm.port}"):
        made = Proxied(allow, {("localhost", local_lm.port)})
        try:
            with made.client() as client:
                answers[allow] = client.get(f"http://localhost:{local_lm.port}/health")
        finally:
            made.close()
    assert answers[""].status_code == 403 and "is a loopback address" in answers[""].text
    assert [answer.status_code for answer in answers.values()][1:] == [200, 200]


def test_bad_requests_unreachable_targets_and_the_connection_cap(local_lm):
    closed_port = socket.socket()
    closed_port.bind(("127.0.0.1", 0))
    port = closed_port.getsockname()[1]
    closed_port.close()
    made = Proxied("127.0.0.0/8", {("127.0.0.1", port), ("127.0.0.1", local_lm.port)}, max_connections=2)
    try:
        relative = raw_exchange(made.forwarder.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert relative.startswith(b"HTTP/1.1 400 ")
        tls_in_plain = raw_exchange(made.forwarder.port, b"GET https://x/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert tls_in_plain.startswith(b"HTTP/1.1 400 ")
        with made.client() as client:
            refused = client.get(f"http://127.0.0.1:{port}/")
        assert refused.status_code == 502 and "cannot connect" in refused.text
        idle = [socket.create_connection(("127.0.0.1", made.forwarder.port)) for _ in range(2)]
        wait_until(lambda: made.proxy.active == 2, 5, what="two idle connections being served")
        over = raw_exchange(made.forwarder.port, b"GET http://127.0.0.1/ HTTP/1.1\r\n\r\n")
        assert over.startswith(b"HTTP/1.1 503 ") and b"more than 2 connections" in over
        for sock in idle:
            sock.close()
        wait_until(lambda: made.proxy.active == 0, 5, what="the idle connections to end")
        with made.client() as client:
            assert client.get(f"http://127.0.0.1:{local_lm.port}/health").status_code == 200
    finally:
        made.close()
    assert not made.proxy.socket_path.exists()


# -- the real call paths, in a process with the sandbox's proxy environment -------------------

CALLS = """
import asyncio, json, sys, time
import dspy, httpx, litellm
lm_url, other_url = sys.argv[1], sys.argv[2]
out = {}
lm = dspy.LM("openai/x", api_base=lm_url, api_key="k", cache=False)
out["dspy"] = lm("What is 2+3?")[0]
out["dspy_async"] = asyncio.run(lm.acall("What is 2+4?"))[0]
call = dict(model="openai/x", api_base=lm_url, api_key="k", messages=[{"role": "user", "content": "What is 2+5?"}])
out["litellm"] = litellm.completion(**call).choices[0].message.content
out["litellm_async"] = asyncio.run(litellm.acompletion(**call)).choices[0].message.content
out["httpx"] = httpx.get(lm_url[:-3] + "/health").json()
def failure(call):
    started = time.monotonic()
    try:
        call()
    except Exception as exc:
        return {"seconds": time.monotonic() - started, "error": str(exc)}
out["denied_http"] = failure(lambda: dspy.LM("openai/x", api_base=other_url, api_key="k", cache=False)("hi"))
out["denied_https"] = failure(lambda: dspy.LM("openai/x", api_key="k", cache=False, num_retries=0)("hi"))
out["prefect_direct"] = failure(lambda: httpx.get("http://127.0.0.1:4200/api/health", timeout=5))
print("RESULT " + json.dumps(out))
"""


def test_dspy_litellm_and_httpx_honour_the_sandbox_proxy_environment(proxied, local_lm):
    before = local_lm.stats()["calls"]
    env = {key: value for key, value in os.environ.items() if "proxy" not in key.lower()}
    env.update(proxy_environment(proxied.url, PREFECT_NO_PROXY))
    other = f"http://127.0.0.1:{local_lm.port + 1 if local_lm.port < 65535 else 1}/v1"
    done = subprocess.run(
        [sys.executable, "-c", CALLS, local_lm.url, other], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert all("deterministic reply" in out[key] for key in ("dspy", "dspy_async", "litellm", "litellm_async"))
    assert out["httpx"] == {"status": "ok"}
    assert local_lm.stats()["calls"] - before == 4
    assert proxied.proxy.allowed[f"127.0.0.1:{local_lm.port}"] == 5, "every call went through the proxy"
    # A denied target fails at once with the proxy's reason (a 403 is not retried) ...
    assert out["denied_http"]["seconds"] < 5 and "denied by the job's egress policy" in out["denied_http"]["error"]
    assert "not one of this job's hosts" in out["denied_http"]["error"]
    # ... and a refused CONNECT says why (DSPy retries it as a transport error when num_retries > 0).
    assert "403 Egress denied: api.openai.com:443 is not one of this job's hosts" in out["denied_https"]["error"]
    # The Prefect API (NO_PROXY) is reached directly, not through the proxy: nothing listens there.
    assert "Connection refused" in out["prefect_direct"]["error"]
    assert not any("4200" in message for message in proxied.denied)
    assert len(proxied.denied) == 2
