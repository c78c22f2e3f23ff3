"""The supervisor composed: an engine forked from the test process, no Prefect API (so no
state to report), real output, exit codes and limits."""

from __future__ import annotations

import os
import signal

import pytest

from deployments.runtime.engine import ForkStarter
from deployments.runtime.outcome import Stop
from deployments.runtime.stop import ParentWatch
from deployments.runtime.supervisor import JobSupervisor, RestartPolicy
from dspy_service.settings import ServiceSettings


@pytest.fixture
def supervise(capfd):
    """Run one job whose engine is `run(env)`; restores the signal handlers it installs."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def run_job(run, environ=None) -> tuple[int, str]:
        environ = environ or {"PATH": os.environ["PATH"]}
        supervisor = JobSupervisor(ServiceSettings(), environ, ForkStarter(run), ParentWatch(os.getppid()))
        code = supervisor.run()
        return code, capfd.readouterr().out

    yield run_job
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def test_the_job_exit_code_and_output_reach_the_worker(supervise):
    def engine(env: dict[str, str]) -> int:
        os.write(1, b"engine says hello\n")
        return 3

    code, out = supervise(engine)
    assert code == 3
    assert "forked engine" in out and "engine says hello" in out


def test_the_engine_sees_only_the_scrubbed_environment(supervise):
    def engine(env: dict[str, str]) -> int:
        os.write(1, f"KEYS {' '.join(sorted(env))}\n".encode())
        return 0

    code, out = supervise(engine, {"PATH": "/bin", "OPENAI_API_KEY": "sk-x", "DSPY_SERVICE_ZYGOTE_SOCKET": "/z"})
    keys = out.split("KEYS ", 1)[1].split()
    assert code == 0 and "PATH" in keys and "MALLOC_ARENA_MAX" in keys
    assert "OPENAI_API_KEY" not in keys and "DSPY_SERVICE_ZYGOTE_SOCKET" not in keys


def test_an_engine_killed_by_a_signal_exits_like_a_shell_reports_it(supervise):
    def engine(env: dict[str, str]) -> int:
        os.kill(os.getpid(), signal.SIGKILL)
        return 0

    code, _ = supervise(engine)
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
