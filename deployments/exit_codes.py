"""The exit codes of `dspy-service jobs ...` and `dspy-service submit`, in one place.

| code | meaning |
|---|---|
| 0 | ok (for `jobs watch` and `submit --wait`: the job succeeded) |
| 1 | any other error: the service unreachable or answering 5xx, 429 (quota) |
| 2 | usage: bad command-line arguments (argparse) |
| 3 | auth: no or a wrong token (401), or the token may not do this (403) |
| 4 | not found (404): no such job, or another user's |
| 5 | the job ended failed or cancelled (`jobs watch`, `submit --wait`) |
| 6 | invalid request: the job file cannot be read or used, or the API answered 400/422 |
| 7 | conflict (409): the job's state does not allow it (cancel a finished job, delete a running one) |
| 130 | interrupted (Ctrl-C) |

Errors are one line on stderr, `error: ...`, naming the request field when the API named one.
"""

from __future__ import annotations

from enum import IntEnum

import httpx

from deployments.job_files import JobFileError
from dspy_service.client import AuthError, Conflict, InvalidRequest, JobFailed, NotFound, ServiceError


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    AUTH = 3
    NOT_FOUND = 4
    JOB_FAILED = 5
    INVALID = 6
    CONFLICT = 7
    INTERRUPTED = 130


_BY_CLASS: tuple[tuple[type[BaseException], ExitCode], ...] = (
    (AuthError, ExitCode.AUTH),
    (NotFound, ExitCode.NOT_FOUND),
    (InvalidRequest, ExitCode.INVALID),
    (Conflict, ExitCode.CONFLICT),
    (JobFailed, ExitCode.JOB_FAILED),
    (JobFileError, ExitCode.INVALID),
    (KeyboardInterrupt, ExitCode.INTERRUPTED),
)


def exit_code_for(error: BaseException) -> ExitCode:
    """The exit code of a command that stopped on `error`."""
    for kind, code in _BY_CLASS:
        if isinstance(error, kind):
            return code
    return ExitCode.ERROR


def exit_code_for_status(status: str | None) -> ExitCode:
    """The exit code of a command that followed a job to its end (`watch`, `submit --wait`)."""
    return ExitCode.OK if status == "success" else ExitCode.JOB_FAILED


def error_line(error: BaseException) -> str:
    """`error: ...`, one line (the API's message may span several)."""
    if isinstance(error, KeyboardInterrupt):
        text = "interrupted"
    elif isinstance(error, httpx.TransportError):
        where = f" {error.request.url}" if _has_request(error) else ""
        text = f"cannot reach the service{where}: {type(error).__name__}: {error}"
    elif isinstance(error, ServiceError | JobFailed | JobFileError):
        text = str(error)
    else:
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return "error: " + " ".join(text.split())


def _has_request(error: httpx.TransportError) -> bool:
    try:
        error.request  # noqa: B018 - raises RuntimeError when the error was made without a request
    except RuntimeError:
        return False
    return True
