"""The one mapping from Prefect flow-run states to the contract's job statuses."""

from __future__ import annotations

from enum import StrEnum

from prefect.client.schemas.objects import StateType


class JobStatus(StrEnum):
    pending = "pending"
    validating = "validating"
    running = "running"
    success = "success"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def active(self) -> bool:
        return not self.terminal


TERMINAL = frozenset({JobStatus.success, JobStatus.failed, JobStatus.cancelled})

# Scheduled covers Late and AwaitingRetry (state names of the SCHEDULED type); Paused
# waits to be resumed, so it is pending too.
STATE_TYPE_TO_STATUS: dict[StateType, JobStatus] = {
    StateType.SCHEDULED: JobStatus.pending,
    StateType.PENDING: JobStatus.pending,
    StateType.PAUSED: JobStatus.pending,
    StateType.RUNNING: JobStatus.running,
    StateType.COMPLETED: JobStatus.success,
    StateType.FAILED: JobStatus.failed,
    StateType.CRASHED: JobStatus.failed,
    StateType.CANCELLING: JobStatus.cancelled,
    StateType.CANCELLED: JobStatus.cancelled,
}

# Task runs of the flow that make up validation; once `compile-program` has started the
# job is running. The names are the task names in tasks/.
COMPILE_TASK_NAME = "compile-program"


def job_status(state_type: StateType | None, compile_started: bool = True) -> JobStatus:
    """Status of a flow run; a RUNNING run is `validating` until its compile task starts."""
    if state_type is None:
        return JobStatus.pending
    status = STATE_TYPE_TO_STATUS[state_type]
    if status is JobStatus.running and not compile_started:
        return JobStatus.validating
    return status


def state_types_for(status: JobStatus) -> list[StateType]:
    """The Prefect state types a status filter must query (validating/running share one)."""
    if status is JobStatus.validating:
        return [StateType.RUNNING]
    return [t for t, s in STATE_TYPE_TO_STATUS.items() if s is status]
