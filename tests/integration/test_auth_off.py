"""`DSPY_SERVICE_AUTH=off`: the original open single-user service, on loopback only.

On loopback the original client flow runs unchanged (no token, the body's `username`);
on any other address the API refuses to start, and so does `dspy-service up`.
"""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from tests.support.payloads import job_payload
from tests.support.stack import RunningStack, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def open_stack(tmp_path_factory, local_lm):
    # migrated=False: Prefect's database starts empty, as on a fresh machine (the one stack
    # of the suite that does; the others copy one migrated once, tests/support/prefect_schema.py).
    running = RunningStack.start(tmp_path_factory.mktemp("auth-off"), "sqlite", auth="off", migrated=False)
    yield running
    running.stop()


@pytest.mark.slow
def test_the_original_client_flow_runs_without_tokens(open_stack, local_lm):
    api_url = open_stack.stack.config.api_url
    assert not open_stack.stack.config.settings.admin_token_file.exists()
    with httpx.Client(base_url=api_url, timeout=60) as client:  # no Authorization header at all
        created = client.post("/run", json=job_payload(local_lm.url, rows=20, username="carol"))
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]
        assert created.json()["username"] == "carol"
        open_stack.wait_terminal(job_id)
        assert client.get(f"/jobs/{job_id}").json()["status"] == "success"
        assert job_id in [j["job_id"] for j in client.get("/jobs").json()["items"]]
        assert [j["job_id"] for j in client.get("/jobs", params={"username": "carol"}).json()["items"]] == [job_id]
        assert client.get("/jobs", params={"username": "somebody-else"}).json()["items"] == []
        assert client.get("/queue").status_code == 200
        assert client.get(f"/jobs/{job_id}/artifact").status_code == 200


def refused_environment(home) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DSPY_SERVICE_", "PREFECT_API_URL"))}
    env.update({"DSPY_SERVICE_AUTH": "off", "DSPY_SERVICE_HOME": str(home), "DSPY_SERVICE_API_HOST": "0.0.0.0"})
    return env


def test_the_api_refuses_to_start_without_auth_on_a_public_address(tmp_path):
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", str(port)]
    done = subprocess.run(command, env=refused_environment(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "DSPY_SERVICE_AUTH=off" in done.stderr and "loopback" in done.stderr, done.stderr[-2000:]


def test_up_refuses_auth_off_on_a_public_address(tmp_path):
    command = [sys.executable, "-m", "deployments.cli", "up", "--host", "0.0.0.0", "--api-port", str(free_port()),
               "--prefect-port", str(free_port()), "--no-local-lm"]
    done = subprocess.run(command, env=refused_environment(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and "loopback" in done.stderr, done.stderr
    assert not (tmp_path / "prefect.db").exists()  # nothing was started
