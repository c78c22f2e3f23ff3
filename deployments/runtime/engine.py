"""The job's flow engine as a child of the supervisor, started cold or forked warm.

Both starters give the supervisor the same small `Engine` interface (pid, stdout, poll,
wait) and prepare the child the same way before any job code runs: a session and process
group of its own, stdin from /dev/null, stdout and stderr into one pipe, only the
descriptors a fresh interpreter would hold, and `confine` (PDEATHSIG, cgroup, rlimits;
limits.confine_engine) called in the child.

- `ColdStarter`: `python -m prefect.engine` as a new interpreter (subprocess.Popen).
- `ForkStarter`: a fork of this already-imported (warm) supervisor that runs
  `prefect.engine` in-process through the `run` function it was given (the zygote's); it
  keeps the descriptors the zygote's imports opened (`keep_fds`), as a fresh interpreter
  would have them.

Which one a supervisor uses is chosen by whoever creates it: the relay (cold) or the
zygote (warm). Starting fails with OSError (or RuntimeError when forking is unsafe because
threads run); a child that fails before running the engine exits with 1 (137 when its
supervisor already died), which the supervisor reports like any other exit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from typing import IO, TYPE_CHECKING, Protocol

from deployments.runtime import procfs

if TYPE_CHECKING:
    from deployments.runtime.limits import PidsCgroup

ENGINE_COMMAND = [sys.executable, "-m", "prefect.engine"]

# Run in the engine child before any job code.
Confine = Callable[[], None]


class Engine(Protocol):
    """What the supervisor uses of its engine child (a subset of subprocess.Popen)."""

    pid: int
    stdout: IO[bytes] | None

    def poll(self) -> int | None: ...

    def wait(self) -> int: ...


class EngineStarter(Protocol):
    """Starts the engine for one attempt of the job; `verb` says how, in the job's log;
    `cgroup` is the pids cgroup the next engine already runs in (a pre-started one), if any."""

    verb: str
    cgroup: PidsCgroup | None

    def start(self, env: Mapping[str, str], confine: Confine) -> Engine: ...


class ColdStarter:
    verb = "started"
    cgroup = None

    def start(self, env: Mapping[str, str], confine: Confine) -> Engine:
        return spawn_engine(ENGINE_COMMAND, env, confine)


def spawn_engine(
    argv: list[str], env: Mapping[str, str], confine: Confine, stdin: int = subprocess.DEVNULL
) -> subprocess.Popen:
    """A new interpreter as the engine child, prepared as every engine is: a session of its
    own, stdin from /dev/null (a pipe for a warm sandbox's job hand-off: warm_sandbox.py),
    stdout and stderr into one pipe, no inherited descriptors, `confine` run before exec
    (also for the sandbox's bubblewrap: job_sandbox.py)."""
    return subprocess.Popen(
        argv,
        env=dict(env),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=confine,
        close_fds=True,
    )


class ForkStarter:
    verb = "forked"
    cgroup = None

    def __init__(self, run: Callable[[dict[str, str]], int], keep_fds: frozenset[int] = frozenset()):
        self.run = run
        self.keep_fds = keep_fds

    def start(self, env: Mapping[str, str], confine: Confine) -> Engine:
        return ForkedEngine(lambda output: self._in_child(dict(env), confine, output))

    def _in_child(self, env: dict[str, str], confine: Confine, output: int) -> int:
        """Prepare like Popen(start_new_session=True, preexec_fn=confine, close_fds=True)
        would, then run the engine and return its exit code."""
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(output, 1)
        os.dup2(output, 2)
        close_fds_except({0, 1, 2, *self.keep_fds})
        confine()
        for signum in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        return self.run(env)


class ForkedEngine:
    """A forked child running `child(output_fd)`, with its stdout/stderr in `stdout`."""

    def __init__(self, child: Callable[[int], int]):
        read, write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        assert_single_threaded()
        pid = os.fork()
        if pid == 0:  # the engine
            code = 1
            try:
                os.close(read)
                code = child(write)
            except BaseException:
                with contextlib.suppress(BaseException):
                    import traceback

                    traceback.print_exc()
            finally:
                os._exit(code)
        os.close(write)
        self.pid = pid
        self.stdout: IO[bytes] | None = open(read, "rb", buffering=0)  # noqa: SIM115 - closed by the supervisor
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        while self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
            except InterruptedError:
                continue
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def assert_single_threaded() -> None:
    """Forking with other threads running could leave locks held forever in the child."""
    if threading.active_count() != 1:
        raise RuntimeError(f"cannot fork safely: {threading.active_count()} threads are running")


def close_fds_except(keep: set[int]) -> None:
    """What close_fds=True does for a subprocess: only the descriptors in `keep` survive."""
    for fd in procfs.open_fds() - keep:
        with contextlib.suppress(OSError):
            os.close(fd)
