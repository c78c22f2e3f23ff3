"""The stack's Prefect server is not an open door: it listens on loopback only, answers
401 to anyone without the home's auth string (a job's parameters included), and no
other web page may call it from a browser."""

from __future__ import annotations

import ipaddress
import stat

import httpx
import pytest

from tests.support.payloads import job_payload
from tests.support.stack import TERMINAL

pytestmark = pytest.mark.integration

UNLISTED_ORIGIN = "http://evil.example"


@pytest.fixture(scope="module")
def job_id(stack, local_lm) -> str:
    job = stack.submit(job_payload(local_lm.url, rows=20))
    stack.wait_for_status(job, TERMINAL)
    return job


def anonymous(stack, **headers) -> httpx.Client:
    return httpx.Client(base_url=stack.stack.config.prefect_api_url, headers=headers, timeout=30)


def test_prefect_api_refuses_requests_without_the_auth_string(stack, job_id):
    wrong = {"Authorization": "Basic " + "ZHNweTp3cm9uZw=="}  # base64("dspy:wrong")
    for headers in ({}, wrong):
        with anonymous(stack, **headers) as prefect:
            assert prefect.get(f"/flow_runs/{job_id}").status_code == 401
            assert prefect.post("/flow_runs/filter", json={"limit": 5}).status_code == 401
            assert prefect.delete(f"/flow_runs/{job_id}").status_code == 401
    # With the string the same requests work (and the run was not deleted above).
    run = stack.prefect.get(f"/flow_runs/{job_id}")
    assert run.status_code == 200 and run.json()["id"] == job_id
    runs = stack.prefect.post("/flow_runs/filter", json={"flow_runs": {"id": {"any_": [job_id]}}})
    assert [r["id"] for r in runs.json()] == [job_id]


def test_health_stays_open_and_says_nothing(stack):
    with anonymous(stack) as prefect:
        response = prefect.get("/health")
    assert response.status_code == 200 and response.json() is True


@pytest.mark.sqlite_only  # the server's own settings, the same on either database
def test_cors_only_for_the_servers_own_ui(stack):
    port = stack.stack.config.prefect_port
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    with anonymous(stack) as prefect:
        foreign = prefect.options("/flow_runs/filter", headers={**preflight, "Origin": UNLISTED_ORIGIN})
        own = prefect.options("/flow_runs/filter", headers={**preflight, "Origin": f"http://localhost:{port}"})
    assert "access-control-allow-origin" not in foreign.headers
    assert own.headers.get("access-control-allow-origin") == f"http://localhost:{port}"


@pytest.mark.sqlite_only
def test_auth_file_is_private_and_the_server_listens_on_loopback_only(stack):
    path = stack.stack.config.settings.prefect_auth_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == stack.stack.prefect_auth
    addresses = listening_addresses(stack.stack.config.prefect_port)
    assert addresses and addresses <= {"127.0.0.1"}, addresses


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on `port` (Linux /proc/net)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as file:
            next(file)
            for line in file:
                local, state = line.split()[1], line.split()[3]
                address, _, hex_port = local.partition(":")
                if state == "0A" and int(hex_port, 16) == port:
                    found.add(decode_address(address))
    return found


def decode_address(hex_address: str) -> str:
    """/proc/net's address: 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))
