"""The supervisor composed: a forked engine, no Prefect API (so no state to report), real
output, exit codes and limits."""

from __future__ import annotations

import os
import signal
import sys
import tempfile

from deployments.runtime.engine import ForkStarter
from deployments.runtime.outcome import Stop
from deployments.runtime.stop import ParentWatch
from deployments.runtime.supervisor import JobSupervisor, RestartPolicy
from dspy_service.settings import ServiceSettings
from tests.support.fresh_interpreter import in_fresh_interpreter


def supervise(engine, environ: dict[str, str] | None = None) -> tuple[int, str]:
    """In a fresh single-threaded interpreter (the supervisor forks its engine; see
    tests.support.fresh_interpreter): run one job whose engine is `engine(env)`; its exit
    code and what the supervisor wrote for the worker."""
    return in_fresh_interpreter(run_job, engine, environ or {"PATH": os.environ["PATH"]})


def run_job(engine, environ: dict[str, str]) -> tuple[int, str]:
    with tempfile.TemporaryFile() as worker_log:
        sys.stdout.flush()
        stdout = os.dup(1)
        os.dup2(worker_log.fileno(), 1)
        try:
            settings = ServiceSettings(sandbox="off")  # fake engines: the supervisor's own mechanics
            supervisor = JobSupervisor(settings, environ, ForkStarter(engine), ParentWatch(os.getppid()))
            code = supervisor.run()
        finally:
            sys.stdout.flush()
            os.dup2(stdout, 1)
            os.close(stdout)
        worker_log.seek(0)
        return code, worker_log.read().decode()


def say_hello(env: dict[str, str]) -> int:
    os.write(1, b"engine says hello\n")
    return 3


def test_the_job_exit_code_and_output_reach_the_worker():
    code, out = supervise(say_hello)
    assert code == 3
    assert "forked engine" in out and "engine says hello" in out


def show_environment(env: dict[str, str]) -> int:
    os.write(1, f"KEYS {' '.join(sorted(env))}\n".encode())
    return 0


def test_the_engine_sees_only_the_scrubbed_environment():
    code, out = supervise(
        show_environment, {"PATH": "/bin", "OPENAI_API_KEY": "sk-x", "DSPY_SERVICE_ZYGOTE_SOCKET": "/z"}
    )
    keys = out.split("KEYS ", 1)[1].split()
    assert code == 0 and "PATH" in keys and "MALLOC_ARENA_MAX" in keys
    assert "OPENAI_API_KEY" not in keys and "DSPY_SERVICE_ZYGOTE_SOCKET" not in keys


def kill_itself(env: dict[str, str]) -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return 0


def test_an_engine_killed_by_a_signal_exits_like_a_shell_reports_it():
    code, _ = supervise(kill_itself)
    assert code == 128 + signal.SIGKILL


class RunState:
    """The run's state type as the Prefect API would answer it."""

    def __init__(self, state_type: str | None):
        self.state_type = lambda: state_type


def test_an_engine_that_never_reached_the_api_is_started_again_while_the_run_is_pending():
    failed = "Traceback (most recent call last):\nRuntimeError: Failed to reach API at http://127.0.0.1:4200/api/\n"
    pending = RestartPolicy(RunState("PENDING"), attempts=3)
    assert pending.start_again(1, 1, None, failed) and pending.start_again(2, 1, None, failed)
    assert not pending.start_again(3, 1, None, failed), "the last attempt is final"
    assert not pending.start_again(1, 1, Stop("cancel", "stopped"), failed)
    assert not RestartPolicy(RunState("RUNNING")).start_again(1, 1, None, failed), "the job had started"
    assert "starting it again in 5 s" in pending.note
