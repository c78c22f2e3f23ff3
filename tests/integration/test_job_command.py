"""A flow run cannot tell the worker to run another command (issue 13, item 4).

Whoever can create a flow run of the deployment can give it `job_variables`. The work
pool's base job template (deployments/job_template.py) declares none, so Prefect answers
422 where it validates them, and where it does not (`POST /flow_runs/`) the worker still
runs our relay, with its own environment, in a fresh directory. Each hostile variable
would touch a marker file if the worker used it: the command itself, a `PATH` whose
`python` is a shell script, a `PYTHONPATH` and a working directory holding a fake
`deployments.runtime.relay`.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect.workers.process import ProcessWorker

from deployments.job_template import JOB_COMMAND, base_job_template
from deployments.runtime.procfs import cmdline_of, environ_of
from tests.support.payloads import job_payload, tenant_model

pytestmark = pytest.mark.integration


@dataclass
class Hostile:
    marker: Path
    job_variables: dict


@pytest.fixture
def hostile(tmp_path) -> Hostile:
    marker = tmp_path / "owned"
    touch = f"open({str(marker)!r}, 'w').close()\n"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake_python = fake_bin / "python"
    fake_python.write_text(f"#!/bin/sh\ntouch '{marker}'\n")
    fake_python.chmod(fake_python.stat().st_mode | stat.S_IXUSR)
    shadow = tmp_path / "cwd"
    (shadow / "deployments" / "runtime").mkdir(parents=True)
    (shadow / "deployments" / "__init__.py").write_text(touch)
    (shadow / "deployments" / "runtime" / "__init__.py").write_text(touch)
    (shadow / "deployments" / "runtime" / "relay.py").write_text(touch)
    job_variables = {
        "command": f"sh -c 'touch {marker}'",
        "env": {"X_CANARY": "1", "PATH": str(fake_bin), "PYTHONPATH": str(shadow)},
        "working_dir": str(shadow),
    }
    return Hostile(marker, job_variables)


@pytest.fixture(scope="module")
def deployment(stack) -> dict:
    name = stack.stack.config.settings.deployment_full_name
    response = stack.prefect.get(f"/deployments/name/{name}")
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def job_run(stack, local_lm) -> dict:
    """The flow run of a real job the API created (never run: its parameters are for copies).
    A key of its own: the copies start from a cold LM cache and run long enough to watch."""
    with stack.paused_work_pool():
        job_id = stack.submit(job_payload(local_lm.url, rows=20, model_config=tenant_model(local_lm.url)))
        run = stack.flow_run(job_id)
        assert stack.api.post(f"/jobs/{job_id}/cancel").status_code == 200
    return run


def test_the_pool_declares_no_job_variable_and_the_deployment_sets_none(stack, deployment):
    pool = stack.prefect.get(f"/work_pools/{stack.stack.config.settings.work_pool}").json()
    template = pool["base_job_template"]
    assert template["job_configuration"]["command"] == JOB_COMMAND
    assert "env" not in template["job_configuration"] and "working_dir" not in template["job_configuration"]
    assert template["variables"]["properties"] == {}
    assert template == base_job_template()
    assert deployment["job_variables"] == {}


def test_prefect_refuses_a_run_with_job_variables(stack, deployment, job_run, hostile):
    body = {"parameters": job_run["parameters"], "tags": job_run["tags"], "job_variables": hostile.job_variables}
    response = stack.prefect.post(f"/deployments/{deployment['id']}/create_flow_run", json=body)
    assert response.status_code == 422, response.text
    assert "command" in response.text

    # Nor can they be added to a scheduled run afterwards.
    body = {"parameters": job_run["parameters"], "state": {"type": "SCHEDULED", "state_details": {}}}
    body["state"]["state_details"]["scheduled_time"] = "2999-01-01T00:00:00Z"
    created = stack.prefect.post(f"/deployments/{deployment['id']}/create_flow_run", json=body)
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    try:
        patched = stack.prefect.patch(f"/flow_runs/{run_id}", json={"job_variables": hostile.job_variables})
        assert patched.status_code == 422, patched.text
    finally:
        stack.prefect.delete(f"/flow_runs/{run_id}")
    assert not hostile.marker.exists()


def test_a_run_carrying_job_variables_still_runs_our_job_command(stack, deployment, job_run, hostile, local_lm):
    # POST /flow_runs/ does not validate job variables: the run keeps them, the worker must not use them.
    body = {
        "flow_id": deployment["flow_id"],
        "deployment_id": deployment["id"],
        "parameters": job_run["parameters"],
        "tags": job_run["tags"],
        "work_pool_name": stack.stack.config.settings.work_pool,
        "work_queue_name": deployment["work_queue_name"],
        "state": {"type": "SCHEDULED"},
        "job_variables": hostile.job_variables,
    }
    local_lm.set_delay(300)
    try:
        created = stack.prefect.post("/flow_runs/", json=body)
        assert created.status_code == 201, created.text
        run_id = created.json()["id"]
        assert stack.flow_run(run_id)["job_variables"] == hostile.job_variables
        relay = stack.processes(run_id).relay  # the engine logged its pid: our flow runs
        assert JOB_COMMAND.split(" ", 1)[1] in (cmdline_of(relay) or "")
        environment = dict(entry.decode(errors="replace").partition("=")[::2] for entry in environ_of(relay) or [])
        assert environment and "X_CANARY" not in environment
        assert environment["PATH"] != hostile.job_variables["env"]["PATH"]
        assert environment.get("PYTHONPATH") != hostile.job_variables["env"]["PYTHONPATH"]
        assert os.readlink(f"/proc/{relay}/cwd") != hostile.job_variables["working_dir"]
        job = stack.wait_terminal(run_id)
    finally:
        local_lm.set_delay(0)
    assert job["status"] == "success", job
    assert not hostile.marker.exists()


@pytest.mark.sqlite_only  # what register writes, the same on either database
def test_register_replaces_an_older_installs_pool_template(stack, deployment):
    from prefect.client.schemas.actions import DeploymentUpdate, WorkPoolUpdate

    pool = stack.stack.config.settings.work_pool
    old_variables = {"command": JOB_COMMAND, "env": {"PYTHONUNBUFFERED": "1"}}
    with stack.prefect_client() as client:
        client.update_work_pool(pool, WorkPoolUpdate(base_job_template=ProcessWorker.get_default_base_job_template()))
        client.update_deployment(deployment["id"], DeploymentUpdate(job_variables=old_variables))
    assert "command" in stack.prefect.get(f"/work_pools/{pool}").json()["base_job_template"]["variables"]["properties"]

    stack.stack.register()

    assert stack.prefect.get(f"/work_pools/{pool}").json()["base_job_template"] == base_job_template()
    assert stack.prefect.get(f"/deployments/{deployment['id']}").json()["job_variables"] == {}
