"""The job supervisor: the process between the worker and the flow engine of one job.

Started by the relay (relay.py, the deployment's job command) or, in warm start, forked by
the zygote (zygote.py). It never runs user code. It

1. scrubs the environment (env.py): provider keys and other secrets of the worker host do
   not reach user code;
2. prepares the job's sandbox (job_sandbox.py: its own mounts, its handed secrets, the
   job-scoped Prefect and egress proxies) and starts the flow engine in it as its child
   (bubblewrap; with DSPY_SERVICE_SANDBOX=off, engine.py: cold, `python -m prefect.engine`,
   or forked from this warm process), in a session and process group of its own, in a
   per-job pids cgroup where the host allows one, with rlimits, a lower scheduling
   priority and PR_SET_PDEATHSIG, so the engine dies with the supervisor (limits.py); a job
   whose sandbox cannot start fails with the reason, before any of its code runs;
3. forwards the engine's stdout/stderr to the worker, capped (output.py);
4. stops the job on cancel, timeout, too many processes or the worker going away
   (stop.py): the cooperative stop signal first, SIGKILL for the whole job after
   DSPY_SERVICE_JOB_CANCEL_GRACE_SECONDS;
5. starts the engine again when it found the Prefect API down before the job started
   (`RestartPolicy`);
6. makes sure the run ends in a terminal state that says why in user terms, whatever
   killed the engine (outcome.py, reporter.py), and exits with the engine's exit code.

User code sees no process outside its sandbox (unsandboxed, `os.kill(os.getppid(), 9)`
kills this supervisor and the job fails, never the worker); a fork bomb fills its own
cgroup, not the host. What a job can see and reach is in README, "Trust boundary". A
Prefect API that stays unreachable only costs the final state report (the reporter gives
up after its patience); the exit code still reaches the worker.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from deployments.runtime.engine import ColdStarter, EngineStarter
from deployments.runtime.env import engine_environment
from deployments.runtime.job_sandbox import JobSandbox, SandboxUnavailable
from deployments.runtime.limits import (
    PR_SET_CHILD_SUBREAPER,
    JobLimits,
    PidsCgroup,
    confine_engine,
    kill_job,
    prctl,
    reap_children,
)
from deployments.runtime.outcome import ExitLimits, Stop, engine_never_reached_api, final_state
from deployments.runtime.output import OutputPump
from deployments.runtime.reporter import PrefectUnreachable, RunReporter
from deployments.runtime.stop import ParentWatch, StopPolicy, WorkerWatch
from dspy_service.contract import NOTIFY_TAG, schedule_tag, user_tag
from dspy_service.errors import JobError
from dspy_service.sandbox_check import SANDBOX_OFF_WARNING
from dspy_service.settings import ServiceSettings, get_settings

if TYPE_CHECKING:
    from deployments.runtime.warm_sandbox import WarmSandbox

PREFECT_UNREACHABLE = "the Prefect API could not be reached to prepare the job's sandbox; submit the job again"


def why_not_prepared(exc: Exception) -> str:
    """Why a job's sandbox could not be prepared, in the words its user reads."""
    if isinstance(exc, PrefectUnreachable):
        return PREFECT_UNREACHABLE
    if isinstance(exc, (SandboxUnavailable, JobError)):
        return str(exc)
    return f"its sandbox could not be prepared ({type(exc).__name__}: {exc})"


class RestartPolicy:
    """An engine that gave up at its start because the Prefect API was unreachable, while
    the run is still Pending, ran nothing of the job: starting it again is safe, and better
    than failing a job the user was promised would wait out a server restart. Up to about
    `attempts` x `pause` seconds."""

    def __init__(self, reporter: RunReporter, attempts: int = 6, pause: float = 5.0):
        self.reporter = reporter
        self.attempts = attempts
        self.pause = pause

    def start_again(self, attempt: int, code: int, stop: Stop | None, output: str) -> bool:
        if attempt >= self.attempts or not engine_never_reached_api(code, stop, output):
            return False
        return self.reporter.state_type() == "PENDING"

    @property
    def note(self) -> str:
        return (
            "the job's engine could not reach the Prefect API before the job started (a server restart?); "
            f"starting it again in {self.pause:g} s"
        )


class JobSupervisor:
    """Runs one job's engine to its end under the service's limits and reports the end."""

    def __init__(
        self,
        settings: ServiceSettings,
        environ: Mapping[str, str],
        starter: EngineStarter,
        worker: WorkerWatch,
        warm: WarmSandbox | None = None,
    ):
        self.warm = warm  # a sandbox started before the job (a warm slot's), to run it in
        self.flow_run_id = environ.get("PREFECT__FLOW_RUN_ID")
        self.settings = settings
        self.environ = environ
        self.sandbox: JobSandbox | None = None
        self.run_read: dict | None = None  # the run as read before the start (its parameters do not change)
        self.env = engine_environment(environ, settings.job_env_passthrough)
        self.starter = starter
        self.limits = JobLimits.from_settings(settings)
        self.reporter = RunReporter(environ, self.flow_run_id)
        self.output = OutputPump(int(settings.job_output_limit_mb * 1024 * 1024))
        self.stop = StopPolicy(
            worker,
            timeout=settings.job_timeout_seconds,
            grace=settings.job_cancel_grace_seconds,
            max_tasks=self.limits.max_tasks,
        )
        self.restart = RestartPolicy(self.reporter)

    def run(self) -> int:
        """Run the engine (again, if the restart policy says so); the exit code for the worker."""
        signal.signal(signal.SIGTERM, self.stop.on_terminate)
        signal.signal(signal.SIGINT, self.stop.on_terminate)
        refusal = self.enter_sandbox()
        if refusal is not None:
            return self.refuse(refusal)
        attempt = 1
        try:
            while True:
                code = self.run_engine()
                if not self.restart.start_again(attempt, code, self.stop.stop, self.output.recent_text()):
                    break
                self.output.note(self.restart.note)
                time.sleep(self.restart.pause)
                self.output.forget_recent()
                attempt += 1
        finally:
            if self.sandbox is not None:
                self.sandbox.close()
        self.output.close()
        self.finish(code)
        self.reporter.close()
        return code if code >= 0 else 128 - code

    def enter_sandbox(self) -> str | None:
        """Prepare the job's sandbox (settings.sandbox on); why the job cannot start, if so."""
        if self.settings.sandbox == "off":
            if self.warm is not None:
                self.warm.retire()
            self.output.note(f"warning: {SANDBOX_OFF_WARNING}")
            return None
        if not self.flow_run_id:
            return "the worker started the job without a flow run id"
        run = self.reporter.read_run()  # waits out a Prefect restart (the reporter's patience)
        if run is None:
            return PREFECT_UNREACHABLE
        self.run_read = run
        self.tag_schedule_run(run)
        self.sandbox = JobSandbox(
            self.settings, self.environ, self.flow_run_id, self.denied, self.reporter.read_secret_block, self.warm
        )
        try:
            self.sandbox.prepare(run)
        except Exception as exc:  # noqa: BLE001 - never run the job unsandboxed; say why it did not start
            self.sandbox.close()
            self.sandbox = None
            return why_not_prepared(exc)
        self.starter = self.sandbox.starter()
        return None

    def tag_schedule_run(self, run: dict) -> None:
        """Runs Prefect's scheduler creates carry only the deployment's tags. A sandboxed
        engine may not change its own tags (it could claim another user's), so its supervisor
        adds the owner's and the schedule's (and the notify tag for a job with a notify_url),
        from parameters only our API writes."""
        parameters = run.get("parameters") or {}
        schedule_id, username = parameters.get("schedule_id"), (parameters.get("job") or {}).get("username")
        if not (isinstance(schedule_id, str) and isinstance(username, str)):
            return
        tags = list(run.get("tags") or [])
        wanted = [user_tag(username), schedule_tag(schedule_id)]
        if (parameters.get("job") or {}).get("notify_url"):
            wanted.append(NOTIFY_TAG)
        missing = [tag for tag in wanted if tag not in tags]
        if missing:
            self.reporter.set_tags([*tags, *missing])

    def denied(self, message: str) -> None:
        """A proxy refused something the job's code asked for: the user sees it in the job's log."""
        self.output.note(message)
        self.reporter.log(message, level=30)

    def refuse(self, reason: str) -> int:
        message = f"the job could not start: {reason}"
        self.output.note(message)
        self.output.close()
        self.reporter.log(message)
        self.reporter.set_state("FAILED", message)
        self.reporter.close()
        return 1

    def run_engine(self) -> int:
        """Start the engine, pass its output on until it exits, clean up after it."""
        supervisor_pid = os.getpid()
        prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of the job become ours to kill
        name = self.flow_run_id or str(supervisor_pid)
        cgroup = self.starter.cgroup or PidsCgroup.create(name, self.limits.max_tasks)  # a warm sandbox's: its own
        engine = self.starter.start(self.env, lambda: confine_engine(self.limits, cgroup, supervisor_pid))
        self.stop.watch(engine, cgroup)
        if self.sandbox is not None:  # the engine's own pid is its namespace's, not the host's
            self.reporter.log(f"sandboxed engine (process {engine.pid} on {socket.gethostname()})", level=20)
        watch = f"cgroup v{cgroup.version}" if cgroup else "process watch"
        self.output.note(
            f"{self.starter.verb} engine {engine.pid} (memory {self.limits.memory_mb or 'unlimited'} MB, "
            f"tasks {self.limits.max_tasks} via {watch})"
        )
        self.stop.limit_time(self.reporter.read_job_timeout(self.run_read))
        assert engine.stdout is not None
        stream = engine.stdout
        self.output.pump(
            stream, exited=lambda: engine.poll() is not None, killed=lambda: self.stop.killed, tick=self.stop.check
        )
        code = engine.wait()
        # Whatever the engine left behind (user subprocesses, adopted orphans) goes too.
        kill_job(engine.pid, cgroup, exclude=None)
        reap_children()
        self.output.drain(stream)
        if cgroup is not None:
            cgroup.remove()
        return code

    def finish(self, code: int) -> None:
        """Make sure the run ends in a terminal state that says what happened. Normally the
        engine has reported it itself; not when it was killed, or when user code ended the
        process (os._exit) in the middle of the run."""
        outcome = final_state(
            self.reporter.state_type(), code, self.stop.stop, self.exit_limits, self.cpu_exhausted(),
            self.output.recent_text(),
        )
        if outcome is None:
            return
        if outcome.explained:
            self.output.note(outcome.message)
            self.reporter.log(outcome.message)
        self.reporter.set_state(outcome.type, outcome.message, name=outcome.name)

    @property
    def exit_limits(self) -> ExitLimits:
        return ExitLimits(self.limits.cpu_seconds, self.limits.max_file_mb, self.limits.memory_mb)

    def cpu_exhausted(self) -> bool:
        """The engine and its children used up the job's CPU time (then the kernel's
        SIGKILL at the hard limit means the CPU limit, not memory)."""
        if not self.limits.cpu_seconds:
            return False
        usage = os.times()
        return usage.children_user + usage.children_system >= self.limits.cpu_seconds


def run_supervisor() -> int:
    """The cold supervisor: the relay's child, starting `python -m prefect.engine`."""
    return JobSupervisor(get_settings(), os.environ, ColdStarter(), ParentWatch(os.getppid())).run()
