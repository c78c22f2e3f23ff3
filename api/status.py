"""The one mapping from Prefect flow-run states to the contract's job statuses, and
from Prefect's end-of-run messages to the user's terms.

Pure functions; a state type Prefect adds in a later release raises KeyError here rather
than being shown as some status by guess.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from enum import StrEnum
from typing import Any

from prefect.client.schemas.objects import StateType

from dspy_service.contract import exit_status_message


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


def job_status(state_type: StateType | None, compile_started: bool = True) -> JobStatus:
    """Status of a flow run; a RUNNING run is `validating` until its compile task starts."""
    if state_type is None:
        return JobStatus.pending
    status = STATE_TYPE_TO_STATUS[state_type]
    if status is JobStatus.running and not compile_started:
        return JobStatus.validating
    return status


def state_type_of(run: Mapping[str, Any]) -> StateType | None:
    """The state type of a flow run in the Prefect API's JSON."""
    value = run.get("state_type")
    return StateType(value) if value else None


def run_status(run: Mapping[str, Any], compile_started: Collection[Any]) -> JobStatus:
    """Status of a flow run (the API's JSON), given the ids (UUIDs) of the runs whose
    compile task started."""
    state_type = state_type_of(run)
    if state_type is not StateType.RUNNING:
        return job_status(state_type)
    return job_status(state_type, any(str(i) == run["id"] for i in compile_started))


def state_types_for(status: JobStatus) -> list[StateType]:
    """The Prefect state types a status filter must query (validating/running share one)."""
    if status is JobStatus.validating:
        return [StateType.RUNNING]
    return [t for t, s in STATE_TYPE_TO_STATUS.items() if s is status]


# Prefect's own messages for runs that ended outside our code (the worker's exit-code
# report, the engine's signal handler, the worker's cancellation), reworded for users.
_PROCESS_EXIT = re.compile(r"^Process exited with status code: (-?\d+)")
_FIXED_MESSAGES = {
    "Flow run was cancelled successfully.": "cancelled by the user",
    "Flow run was cancelled before execution started.": "cancelled by the user before it started",
    "Flow run cancelled by worker (no infrastructure found).": "cancelled by the user before it started",
    "Flow run cancelled by worker while pending.": "cancelled by the user before it started",
    "Execution was aborted by a termination signal.": "the job process was stopped by a termination signal "
    "(its worker shut down?)",
}


def job_message(state_type: StateType | None, message: str | None) -> str | None:
    """A terminal state's message in the user's terms."""
    if not message:
        # Prefect's own Cancelled for a cancel of a run with no process (no message).
        return "cancelled by the user before it started" if state_type is StateType.CANCELLED else message
    if message in _FIXED_MESSAGES:
        return _FIXED_MESSAGES[message]
    match = _PROCESS_EXIT.match(message)
    if match:
        return exit_status_message(int(match.group(1)))
    if message.startswith("Flow run could not start:"):
        return "the job process could not start:" + message[len("Flow run could not start:") :]
    return message
