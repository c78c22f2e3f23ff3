"""Errors whose message is meant for the user who submitted the job."""

from __future__ import annotations


class JobError(Exception):
    """A problem with the submitted job, worded so the user can act on it.

    `field` names the request field at fault when there is one. The API answers these
    with 400 before queueing; inside a flow run they fail the run with `str(error)` as
    the state message.
    """

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message


def out_of_memory_message() -> str:
    """MemoryError in the job's process: say it ran out, and what the limit is."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return "the job ran out of memory (MemoryError)"
    return (
        f"the job ran out of memory: its limit is {soft // (1024 * 1024)} MB "
        "(DSPY_SERVICE_JOB_MEMORY_MB)"
    )
