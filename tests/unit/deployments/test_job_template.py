"""The work pool's base job template fixes what the worker runs: Prefect's own code builds
the job from it and a run's hostile `job_variables`, and Prefect's own validation of job
variables rejects them."""

from __future__ import annotations

import asyncio
import json
import os
import uuid

import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun
from prefect.utilities.schema_tools import ValidationError, validate
from prefect.utilities.templating import find_placeholders
from prefect.workers.process import ProcessJobConfiguration

from deployments.job_template import JOB_COMMAND, base_job_template
from deployments.register import deployment_definition

HOSTILE = {
    "command": "sh -c 'touch /tmp/owned'",
    "env": {"PATH": "/tmp/evil-bin", "X_CANARY": "1"},
    "env.LD_PRELOAD": "/tmp/evil.so",
    "working_dir": "/tmp/evil-cwd",
    "stream_output": False,
}


def job_configuration(values: dict) -> ProcessJobConfiguration:
    """The job the process worker would start for a run carrying `values` as job variables."""

    async def build() -> ProcessJobConfiguration:
        # A client is never contacted: the template refers to no block and no Variable.
        client = PrefectClient("http://127.0.0.1:9/api")
        return await ProcessJobConfiguration.from_template_and_values(base_job_template(), values, client=client)

    configuration = asyncio.run(build())
    configuration.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="a-run"))
    return configuration


def test_the_template_has_the_job_command_and_no_placeholder():
    template = base_job_template()
    assert template["job_configuration"]["command"] == JOB_COMMAND == "python -m deployments.runtime.relay"
    assert find_placeholders(json.dumps(template["job_configuration"])) == set()
    assert "env" not in template["job_configuration"] and "working_dir" not in template["job_configuration"]
    assert template["variables"]["properties"] == {}
    assert template["variables"]["additionalProperties"] is False


def test_a_runs_job_variables_change_nothing_the_worker_runs():
    job = job_configuration(HOSTILE)
    assert job.command == JOB_COMMAND and job._command_configured
    assert job.env["PATH"] == os.environ["PATH"]
    assert "X_CANARY" not in job.env and "LD_PRELOAD" not in job.env
    assert job.working_dir is None  # a fresh temporary directory per job
    assert job.stream_output is True
    assert job.env["PREFECT__FLOW_RUN_ID"]  # Prefect's per-run variables still reach the job


def test_without_job_variables_the_job_is_the_same():
    plain, hostile = job_configuration({}), job_configuration(HOSTILE)
    assert (plain.command, plain.working_dir, plain.stream_output) == (
        hostile.command,
        hostile.working_dir,
        hostile.stream_output,
    )


@pytest.mark.parametrize("name", ["command", "env", "working_dir", "stream_output", "anything"])
def test_prefect_rejects_any_job_variable(name):
    # What the Prefect server runs on /deployments/{id}/create_flow_run and PATCH /flow_runs/{id}.
    with pytest.raises(ValidationError):
        validate({name: HOSTILE.get(name, "x")}, base_job_template()["variables"], raise_on_error=True)
    assert validate({}, base_job_template()["variables"], raise_on_error=True) == []


def test_the_deployment_sets_no_job_variable():
    assert deployment_definition()["work_pool"]["job_variables"] == {}
