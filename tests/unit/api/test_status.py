"""Prefect states -> job statuses, and status filters -> the state types to query."""

from __future__ import annotations

import uuid

import pytest
from prefect.client.schemas.objects import StateType

from api.status import JobStatus, job_message, run_status, state_types_for


def run(state_type: str | None) -> dict:
    return {"id": str(uuid.uuid4()), "state_type": state_type}


def test_a_running_run_is_validating_until_its_compile_task_starts():
    running = run("RUNNING")
    assert run_status(running, set()) is JobStatus.validating
    assert run_status(running, {uuid.UUID(running["id"])}) is JobStatus.running
    assert run_status(run("CANCELLED"), set()) is JobStatus.cancelled
    assert run_status(run("CANCELLING"), set()) is JobStatus.cancelled
    assert run_status(run(None), set()) is JobStatus.pending


@pytest.mark.parametrize(
    ("status", "state_types"),
    [
        (JobStatus.pending, {StateType.SCHEDULED, StateType.PENDING, StateType.PAUSED}),
        (JobStatus.validating, {StateType.RUNNING}),
        (JobStatus.running, {StateType.RUNNING}),
        (JobStatus.success, {StateType.COMPLETED}),
        (JobStatus.failed, {StateType.FAILED, StateType.CRASHED}),
        (JobStatus.cancelled, {StateType.CANCELLING, StateType.CANCELLED}),
    ],
)
def test_status_filters_query_the_state_types_of_the_status(status, state_types):
    assert set(state_types_for(status)) == state_types


def test_prefect_end_messages_are_reworded_for_users():
    assert job_message(StateType.CANCELLED, "Flow run was cancelled successfully.") == "cancelled by the user"
    before = "cancelled by the user before it started"
    assert job_message(StateType.CANCELLED, "Flow run cancelled by worker while pending.") == before
    assert job_message(StateType.CANCELLED, None) == before  # Prefect's Cancelled for a run with no process
    assert job_message(StateType.FAILED, None) is None
    assert job_message(StateType.CRASHED, "Process exited with status code: -9").startswith(
        "the job process was killed (SIGKILL)"
    )
    assert job_message(StateType.FAILED, "Flow run could not start: no image").startswith(
        "the job process could not start: no image"
    )
    assert job_message(StateType.FAILED, "a message of ours") == "a message of ours"
