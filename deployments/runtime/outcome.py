"""How a job ended, in user terms: a pure interpreter of the engine's exit.

Given what the supervisor knows when the engine is gone (its exit code, why the
supervisor stopped it, if it did, the job's limits, whether it used up its CPU time, and
the last lines it printed), `final_state` says which terminal state the run must end in
and the message the user reads, and `explain_exit` words the message alone. Nothing here
talks to a process or the network, and nothing raises: an exit nobody can explain gets
the generic "exited with code N" wording.

The supervisor only applies the result when the engine itself could not report the final
state (it was killed, or user code ended the process in the middle of the run).
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass

from dspy_service.contract import TERMINAL_STATE_TYPES, signal_message

# A Python exception line as the interpreter prints it last: `module.SomeError: message`.
ERROR_LINE = re.compile(r"^[\w.]+(Error|Exception|Exit|Interrupt)\b:?.*$")
# Errors that mean the engine lost its connection to the Prefect API.
API_LOST_WORDS = ("ConnectError", "PrefectHTTPStatusError", "database is locked")
CANCELLED_MESSAGE = "cancelled by the user; the job's processes were stopped"
ENDED_WHILE_CANCELLING_MESSAGE = "cancelled by the user; the job's processes had ended"


@dataclass(frozen=True)
class Stop:
    """Why the supervisor stopped the job: `kind` (cancel | timeout | tasks | worker) and
    the user-facing `reason`."""

    kind: str
    reason: str


@dataclass(frozen=True)
class ExitLimits:
    """The job limits an exit can be blamed on (0 or None: not set)."""

    cpu_seconds: int = 0
    max_file_mb: int = 0
    memory_mb: int | None = None


@dataclass(frozen=True)
class Outcome:
    """The terminal state to set: Prefect state `type`, its `message` and optional `name`;
    `explained` is False for a plain confirmation that needs no note in the job's log."""

    type: str
    message: str
    name: str | None = None
    explained: bool = True


def last_error(output: str) -> str | None:
    """The last `SomeError: message` line in `output`, if any (at most 300 characters)."""
    for line in reversed(output.splitlines()):
        match = ERROR_LINE.match(line.strip())
        if match:
            return match.group(0)[:300]
    return None


def explain_exit(code: int, stop: Stop | None, limits: ExitLimits, cpu_exhausted: bool, output: str) -> str:
    """Why the engine ended with `code` (negative: killed by that signal), for the user."""
    if stop is not None:
        return stop.reason
    if code < 0:
        return explain_signal(-code, limits, cpu_exhausted)
    error = last_error(output)
    if error and any(word in error for word in API_LOST_WORDS):
        return f"the job process lost the Prefect API and stopped (exit code {code}): {error}; submit it again"
    if error:
        return f"the job process exited with code {code} before the job finished: {error}"
    return (
        f"the job process exited with code {code} before the job finished "
        "(did the signature or metric code call os._exit() or exit the interpreter?)"
    )


def explain_signal(signum: int, limits: ExitLimits, cpu_exhausted: bool) -> str:
    # The CPU rlimit sends SIGXCPU at the soft limit and SIGKILL at the hard one.
    if signum == signal.SIGXCPU or (signum == signal.SIGKILL and cpu_exhausted):
        return (
            f"the job used more than its {limits.cpu_seconds} s of CPU time "
            "(DSPY_SERVICE_JOB_CPU_SECONDS) and was stopped"
        )
    if signum == signal.SIGXFSZ:
        return f"the job wrote a file larger than {limits.max_file_mb} MB (DSPY_SERVICE_JOB_MAX_FILE_MB)"
    return signal_message(signum, limits.memory_mb)


def final_state(
    state: str | None, code: int, stop: Stop | None, limits: ExitLimits, cpu_exhausted: bool, output: str
) -> Outcome | None:
    """The state the run must be set to now that the engine is gone, given its current
    `state` type; None when there is nothing to set (already terminal, or unknown).

    A run still Cancelling is Cancelled whoever stopped the engine: nothing of the job runs
    any more, and an engine that stopped on its own (its Running refused because the cancel
    came first, or its final state refused because the cancel came last) leaves nobody
    else to confirm it (the worker's cancel watches only a live process)."""
    if state is None or state in TERMINAL_STATE_TYPES:
        return None
    if state == "CANCELLING":
        if stop is not None and stop.kind == "cancel":
            return Outcome("CANCELLED", CANCELLED_MESSAGE, explained=False)
        return Outcome("CANCELLED", ENDED_WHILE_CANCELLING_MESSAGE, explained=False)
    message = explain_exit(code, stop, limits, cpu_exhausted, output)
    kind = stop.kind if stop is not None else None
    if kind == "timeout":
        return Outcome("FAILED", message, name="TimedOut")
    if kind in ("worker", "cancel"):
        return Outcome("CRASHED", message)
    return Outcome("FAILED", message)


def engine_never_reached_api(code: int, stop: Stop | None, output: str) -> bool:
    """The engine gave up at its very start because the Prefect API was unreachable (it
    checks the API once, without retries). Whether nothing of the job ran also needs the
    run to be still Pending: the caller checks that."""
    return code == 1 and stop is None and "Failed to reach API" in (last_error(output) or "")
