"""Jobs nobody is left to end are ended from their stored state, not from events.

A worker that dies between taking a run (Pending) and starting its process leaves no
process to report; a run cancelled while its worker is gone stays Cancelling. The
automations catch both from state-change events, which a server restart can drop; the
API's sweep (api/stuck_jobs.py) reads the states. The sweep is called here against the
real server with its clock moved past the thresholds, so the test does not wait them out.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from uuid import UUID

import pytest

from api.stuck_jobs import sweep_stuck_jobs
from dspy_service.settings import ServiceSettings
from tests.support.payloads import job_payload
from tests.support.stack import prefect_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def run_taken_and_abandoned(rstack, local_lm, state_type: str) -> str:
    """A run of the deployment, with a real job's parameters, left in `state_type` as a
    worker (Pending) or a cancel (Cancelling) would leave it, with no process behind it."""
    from prefect.client.schemas.objects import State, StateType

    template = rstack.flow_run(rstack.submit(job_payload(local_lm.url, rows=20)))
    with rstack.prefect_client() as client:  # Prefect's client retries a busy SQLite server's 503s
        created = client.create_flow_run_from_deployment(
            UUID(template["deployment_id"]),
            parameters=template["parameters"],
            tags=template["tags"],
            state=State(type=StateType(state_type), name=state_type.title()),
        )
    return str(created.id)


def sweep(rstack, deployment_id: str, seconds_later: float) -> list[UUID]:
    from prefect.client.orchestration import get_client

    async def run() -> list[UUID]:
        async with get_client() as client:
            now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds_later)
            return await sweep_stuck_jobs(client, UUID(deployment_id), ServiceSettings(), now=now)

    with prefect_settings(rstack.stack):
        return asyncio.run(run())


def test_jobs_stuck_pending_or_cancelling_are_ended_with_a_reason(rstack, local_lm):
    pending = run_taken_and_abandoned(rstack, local_lm, "PENDING")
    cancelling = run_taken_and_abandoned(rstack, local_lm, "CANCELLING")
    deployment_id = rstack.flow_run(pending)["deployment_id"]
    settings = ServiceSettings()

    # Within the thresholds nothing is touched: a worker may be starting the process.
    assert not {UUID(pending), UUID(cancelling)} & set(sweep(rstack, deployment_id, seconds_later=0))
    assert rstack.api.get(f"/jobs/{pending}/summary").json()["status"] == "pending"

    later = max(settings.stuck_pending_seconds, settings.zombie_after_seconds) + 1
    assert {UUID(pending), UUID(cancelling)} <= set(sweep(rstack, deployment_id, seconds_later=later))

    job = rstack.api.get(f"/jobs/{pending}/summary").json()
    assert job["status"] == "failed"
    assert "worker that took this job went away before starting it" in job["message"], job
    job = rstack.api.get(f"/jobs/{cancelling}/summary").json()
    assert job["status"] == "cancelled"
    assert rstack.flow_run(cancelling)["state_type"] == "CANCELLED"
    # A second sweep (another API replica) finds nothing left to do.
    assert not {UUID(pending), UUID(cancelling)} & set(sweep(rstack, deployment_id, seconds_later=later))
