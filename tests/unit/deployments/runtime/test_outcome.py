"""The supervisor's decision on how a job ended: the state it sets and what the user reads."""

from __future__ import annotations

import signal

import pytest

from deployments.runtime.outcome import (
    ExitLimits,
    Outcome,
    Stop,
    engine_never_reached_api,
    explain_exit,
    final_state,
    last_error,
)
from dspy_service.contract import KILLED_MESSAGE, WORKER_GONE_MESSAGE, signal_message

LIMITS = ExitLimits(cpu_seconds=600, max_file_mb=256, memory_mb=4096)
TRACEBACK = "Traceback (most recent call last):\n  File \"x.py\", line 1\n"


def ended(code: int, stop: Stop | None = None, *, state: str = "RUNNING", cpu: bool = False, output: str = ""):
    return final_state(state, code, stop, LIMITS, cpu, output)


@pytest.mark.parametrize("state", [None, "COMPLETED", "FAILED", "CRASHED", "CANCELLED"])
def test_a_run_already_ended_or_unknown_is_left_alone(state):
    assert ended(-signal.SIGKILL, Stop("timeout", "too long"), state=state) is None


def test_a_user_cancel_the_supervisor_carried_out_is_confirmed():
    outcome = ended(-signal.SIGKILL, Stop("cancel", "the worker stopped it"), state="CANCELLING")
    assert outcome == Outcome("CANCELLED", "cancelled by the user; the job's processes were stopped", explained=False)


@pytest.mark.parametrize("code, stop", [(0, None), (1, None), (-signal.SIGKILL, Stop("timeout", "too long"))])
def test_a_run_left_cancelling_by_an_engine_that_stopped_otherwise_is_cancelled(code, stop):
    """Its Running refused (the cancel came first) or its end refused (the cancel came last):
    nobody else would confirm the cancel, the worker's watch ended with the process."""
    outcome = ended(code, stop, state="CANCELLING")
    assert outcome == Outcome("CANCELLED", "cancelled by the user; the job's processes had ended", explained=False)


def test_a_timeout_fails_the_run_as_timed_out_with_the_stop_reason():
    outcome = ended(-signal.SIGKILL, Stop("timeout", "the job exceeded its time limit of 5 s"))
    assert outcome == Outcome("FAILED", "the job exceeded its time limit of 5 s", name="TimedOut")


@pytest.mark.parametrize("kind", ["worker", "cancel"])
def test_the_worker_going_or_stopping_the_job_crashes_the_run(kind):
    outcome = ended(-signal.SIGKILL, Stop(kind, WORKER_GONE_MESSAGE))
    assert outcome == Outcome("CRASHED", WORKER_GONE_MESSAGE)


def test_too_many_tasks_fails_the_run_with_the_stop_reason():
    outcome = ended(-signal.SIGKILL, Stop("tasks", "more than 512 processes/threads"))
    assert outcome == Outcome("FAILED", "more than 512 processes/threads")


def test_a_stop_reason_wins_over_the_exit_code():
    assert explain_exit(-signal.SIGXCPU, Stop("timeout", "too long"), LIMITS, True, "ValueError: x") == "too long"


def test_sigkill_is_the_kill_message():
    assert ended(-signal.SIGKILL) == Outcome("FAILED", KILLED_MESSAGE)


@pytest.mark.parametrize("signum, cpu", [(signal.SIGXCPU, False), (signal.SIGKILL, True)])
def test_cpu_time_used_up_names_the_cpu_limit(signum, cpu):
    message = ended(-signum, cpu=cpu).message
    assert message == "the job used more than its 600 s of CPU time (DSPY_SERVICE_JOB_CPU_SECONDS) and was stopped"


def test_a_too_large_file_names_the_file_limit():
    message = ended(-signal.SIGXFSZ).message
    assert message == "the job wrote a file larger than 256 MB (DSPY_SERVICE_JOB_MAX_FILE_MB)"


def test_another_signal_names_it_and_the_memory_limit():
    message = ended(-signal.SIGSEGV).message
    assert message == signal_message(signal.SIGSEGV, 4096)
    assert "SIGSEGV" in message and "4096 MB" in message


@pytest.mark.parametrize(
    "line",
    [
        "httpx.ConnectError: [Errno 111] Connection refused",
        "prefect.exceptions.PrefectHTTPStatusError: Server error '503 Service Unavailable'",
        "sqlite3.OperationalError: database is locked",
    ],
)
def test_losing_the_prefect_api_says_so_and_to_submit_again(line):
    outcome = ended(1, output=TRACEBACK + line + "\n")
    assert outcome == Outcome(
        "FAILED", f"the job process lost the Prefect API and stopped (exit code 1): {line}; submit it again"
    )


def test_a_plain_exit_quotes_the_last_error_line():
    output = TRACEBACK + "KeyError: 'answer'\nsome log line after it\n"
    message = ended(3, output=output).message
    assert message == "the job process exited with code 3 before the job finished: KeyError: 'answer'"


def test_a_plain_exit_without_an_error_line_suggests_an_exit_call():
    message = ended(0, output="INFO all good\n").message
    assert message == (
        "the job process exited with code 0 before the job finished "
        "(did the signature or metric code call os._exit() or exit the interpreter?)"
    )


def test_last_error_is_the_last_exception_line_and_capped():
    output = "ValueError: first\n  noise\nmymodule.CustomException: second\nplain line\n"
    assert last_error(output) == "mymodule.CustomException: second"
    assert last_error("nothing to see\n") is None
    assert len(last_error("RuntimeError: " + "x" * 1000)) == 300


def test_only_a_start_that_failed_to_reach_the_api_is_started_again():
    failed = TRACEBACK + "RuntimeError: Failed to reach API at http://127.0.0.1:4200/api/\n"
    assert engine_never_reached_api(1, None, failed)
    assert not engine_never_reached_api(2, None, failed)
    assert not engine_never_reached_api(1, Stop("cancel", "stopped"), failed)
    assert not engine_never_reached_api(1, None, TRACEBACK + "ValueError: bad\n")
