"""When and how the supervisor stops a running job.

`StopPolicy` stops the job when it is cancelled (the worker SIGTERMs the job process), when
it exceeds its wall-clock limit, when it runs too many processes, or when the worker itself
goes away: first the cooperative stop signal (contract.STOP_SIGNAL; the engine's handler
lets LMs and optimizers finish their step), then SIGKILL for the whole job (limits.kill_job)
once the grace has passed. The first reason wins; later ones are ignored.

How the supervisor sees the worker go depends on how it was started (`WorkerWatch`): a cold
supervisor is the relay's child and sees its parent change (`ParentWatch`); a warm one is
the zygote's child and sees EOF on the relay's connection (`RelayWatch`). A watch that
cannot tell (an unexpected socket error) reports the worker gone: stopping a job is safer
than leaving it running unattended.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from typing import Any, Protocol

from deployments.runtime import procfs
from deployments.runtime.engine import Engine
from deployments.runtime.limits import PidsCgroup, kill_job
from deployments.runtime.outcome import Stop
from dspy_service.contract import STOP_SIGNAL, WORKER_GONE_MESSAGE, signal_name


class WorkerWatch(Protocol):
    def worker_gone(self) -> bool: ...


class ParentWatch:
    """The worker is gone once our parent (the relay) is not the one we started with."""

    def __init__(self, parent: int):
        self.parent = parent

    def worker_gone(self) -> bool:
        return os.getppid() != self.parent


class RelayWatch:
    """The worker is gone once the relay's connection reads EOF (the relay never sends
    anything after its request, so readable means EOF)."""

    def __init__(self, conn: socket.socket):
        self.conn = conn

    def worker_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.conn], [], [], 0)
            return bool(readable) and self.conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True


def describe_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    return f"{secs} s"


class StopPolicy:
    """Decides to stop the job (`check`, `on_terminate`) and carries it out."""

    def __init__(self, worker: WorkerWatch, *, timeout: float, grace: float, max_tasks: int):
        self.worker = worker
        self.timeout = timeout
        self.grace = grace
        self.max_tasks = max_tasks
        self.started = time.monotonic()
        self.stop: Stop | None = None
        self.deadline: float | None = None
        self.killed = False
        self.engine: Engine | None = None
        self.cgroup: PidsCgroup | None = None

    def watch(self, engine: Engine, cgroup: PidsCgroup | None) -> None:
        """The engine (and its cgroup) that stopping the job means stopping now."""
        self.engine, self.cgroup = engine, cgroup

    def limit_time(self, requested: float | None) -> None:
        """The job may ask for less time than the service allows, never more."""
        if requested is not None and 0 < requested < self.timeout:
            self.timeout = requested

    def request(self, kind: str, reason: str, grace: float | None = None) -> None:
        """Tell the engine to stop now; kill the whole job after the grace."""
        if self.stop is not None:
            return
        self.stop = Stop(kind, reason)
        grace = self.grace if grace is None else grace
        self.deadline = time.monotonic() + grace
        if self.engine is not None and self.engine.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.engine.pid, STOP_SIGNAL)
        if grace <= 0:
            self.kill()

    def kill(self) -> None:
        if self.engine is None:
            return
        self.killed = True
        kill_job(self.engine.pid, self.cgroup, exclude=self.engine.pid)

    def on_terminate(self, signum: int, _frame: Any) -> None:
        """Signal handler: the worker SIGTERMs the job process to cancel the run (and on
        its own shutdown)."""
        self.request(
            "cancel",
            f"the worker running this job stopped it ({signal_name(signum)}; shutting down?), so the job was "
            "stopped; submit it again",
        )

    def check(self) -> None:
        """Called every poll: kill after the grace, or find a reason to stop."""
        now = time.monotonic()
        if self.deadline is not None and not self.killed and now >= self.deadline:
            self.kill()
        if self.stop is not None:
            return
        if self.worker.worker_gone():
            self.request("worker", WORKER_GONE_MESSAGE, grace=0)
        elif now - self.started > self.timeout:
            self.request(
                "timeout",
                f"the job exceeded its time limit of {describe_seconds(self.timeout)} "
                "(timeout_seconds, or DSPY_SERVICE_JOB_TIMEOUT_SECONDS) and was stopped",
            )
        elif self._too_many_tasks():
            self.request(
                "tasks",
                f"the job tried to run more than {self.max_tasks} processes/threads at once (a fork bomb?; "
                "DSPY_SERVICE_JOB_MAX_TASKS) and was stopped",
                grace=0,
            )

    def _too_many_tasks(self) -> bool:
        if self.cgroup is not None:
            return bool(self.cgroup.limit_hits())
        # Without a cgroup the count is only a fallback: stop well before the host suffers.
        if self.engine is None:
            return False
        session = getattr(self.engine, "session", self.engine.pid)  # a sandboxed engine's is bubblewrap's
        return len(procfs.session_members(session)) > self.max_tasks // 8
