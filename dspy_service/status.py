"""The one mapping from Prefect flow-run states to the contract's job statuses."""

from __future__ import annotations

import re
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


# Messages of states our automations (deployments/automations.py) and the API's sweep
# (api/stuck_jobs.py) set when nobody is left to end a job.
ZOMBIE_MESSAGE = (
    "the job's process stopped sending heartbeats (its worker host or process died); the job was marked failed"
)
STUCK_CANCEL_MESSAGE = "cancelled by the user; its worker could not be reached to confirm"
STUCK_PENDING_MESSAGE = (
    "the worker that took this job went away before starting it; the job was marked failed, submit it again"
)

# Prefect's own messages for runs that ended outside our code (the worker's exit-code
# report, the engine's signal handler, the worker's cancellation), reworded for users.
_PROCESS_EXIT = re.compile(r"^Process exited with status code: (-?\d+)")
_FIXED_MESSAGES = {
    "Flow run was cancelled successfully.": "cancelled by the user",
    "Flow run was cancelled before execution started.": "cancelled by the user before it started",
    "Execution was aborted by a termination signal.": "the job process was stopped by a termination signal "
    "(its worker shut down?)",
}


def job_message(state_type: StateType | None, message: str | None) -> str | None:
    """A terminal state's message in the user's terms."""
    if not message:
        return message
    if message in _FIXED_MESSAGES:
        return _FIXED_MESSAGES[message]
    match = _PROCESS_EXIT.match(message)
    if match:
        code = int(match.group(1))
        if code in (-9, 137):
            return (
                "the job process was killed (SIGKILL): by the operating system (out of memory?), by code in "
                "the job (e.g. os.kill) or by an operator"
            )
        if code < 0 or code > 128:
            signum = -code if code < 0 else code - 128
            return f"the job process died from signal {signum} (status code {code})"
        return f"the job process exited unexpectedly with status code {code}"
    if message.startswith("Flow run could not start:"):
        return "the job process could not start:" + message[len("Flow run could not start:") :]
    return message
