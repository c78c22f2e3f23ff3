"""The job supervisor: the process between the worker and the flow engine of one job.

Started by flows/job_process.py (the deployment's job command). It never runs user
code. It

1. scrubs the environment (flows/job_env.py): provider keys and other secrets of the
   worker host do not reach user code; a job's own API keys travel in its model config;
2. starts the real flow engine (`python -m prefect.engine`) as its child, in a session
   and process group of its own, in a per-job pids cgroup where the host allows one, with
   rlimits (memory, CPU time, file size, open files; flows/job_limits.py), a lower
   scheduling priority and PR_SET_PDEATHSIG, so the engine dies with the supervisor;
3. forwards the engine's stdout/stderr to the worker, capped (flows/output_limits.py);
4. stops the job when it is cancelled (the worker SIGTERMs the job process), when it
   exceeds its wall-clock limit, when it runs too many processes, or when the worker
   itself goes away: a cooperative stop signal first (dspy_service/stopping.py), then
   SIGKILL for the whole process group after DSPY_SERVICE_JOB_CANCEL_GRACE_SECONDS;
5. makes sure the run ends in a terminal state that says why in user terms, whatever
   killed the engine, and exits with the engine's exit code.

Warm start (flows/zygote.py): the supervisor is then a fork of the zygote, which has
already imported Prefect, DSPy and the flow, and the engine is a fork of the supervisor
(ForkedEngine below) that runs `prefect.engine` as `python -m prefect.engine` would, after
exactly the same preparation (session, cgroup, rlimits, nice, PDEATHSIG, scrubbed
environment), instead of a fresh interpreter. The relay's connection stands in for its
parent pid: EOF on it means the worker is gone.

So `os.kill(os.getppid(), 9)` in user code kills this supervisor (the job fails), never
the worker; a fork bomb fills its own cgroup, not the host. This is damage control, not
a sandbox: see README, "Trust boundary".
"""

from __future__ import annotations

import base64
import collections
import contextlib
import datetime as dt
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

import httpx

from dspy_service.contract import STOP_SIGNAL, TERMINAL_STATE_TYPES, WORKER_GONE_MESSAGE, signal_message, signal_name
from dspy_service.settings import ServiceSettings, get_settings
from flows.job_env import scrub_environment
from flows.job_limits import (
    PR_SET_CHILD_SUBREAPER,
    PR_SET_PDEATHSIG,
    JobLimits,
    PidsCgroup,
    count_session_processes,
    kill_job,
    prctl,
    reap_children,
)
from flows.output_limits import HeadTailCap

ENGINE_COMMAND = [sys.executable, "-m", "prefect.engine"]
POLL_SECONDS = 0.2
ERROR_LINE = re.compile(r"^[\w.]+(Error|Exception|Exit|Interrupt)\b:?.*$")
# An engine that finds the Prefect API down at its start is started again (see
# JobSupervisor._engine_never_reached_api), for up to about this many tries x seconds.
ENGINE_START_ATTEMPTS = 6
ENGINE_RESTART_SECONDS = 5.0


def describe_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    return f"{secs} s"


class RunReporter:
    """The few Prefect API calls the wrapper makes, over plain HTTP (importing the
    Prefect client would add a second or two of CPU to every job start)."""

    def __init__(self, environ: Mapping[str, str], flow_run_id: str | None):
        self.flow_run_id = flow_run_id
        api_url = (environ.get("PREFECT_API_URL") or "").rstrip("/")
        headers = {}
        if environ.get("PREFECT_API_KEY"):
            headers["Authorization"] = f"Bearer {environ['PREFECT_API_KEY']}"
        elif environ.get("PREFECT_API_AUTH_STRING"):
            token = base64.b64encode(environ["PREFECT_API_AUTH_STRING"].encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        self.client = httpx.Client(base_url=api_url, headers=headers, timeout=10) if api_url and flow_run_id else None

    def _call(self, method: str, path: str, patience: float = 90.0, **kwargs: Any) -> Any:
        """One API call, retried while the server is unreachable (it may be restarting)."""
        if self.client is None:
            return None
        deadline = time.monotonic() + patience
        delay = 0.25
        while True:
            try:
                response = self.client.request(method, path, **kwargs)
                if response.status_code < 500:
                    return response.json() if response.status_code < 300 else None
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() + delay > deadline:
                return None
            time.sleep(delay)
            delay = min(delay * 2, 3.0)

    def read_run(self, patience: float = 90.0) -> dict[str, Any] | None:
        return self._call("GET", f"/flow_runs/{self.flow_run_id}", patience=patience)

    def state_type(self) -> str | None:
        run = self.read_run()
        state = (run or {}).get("state") or {}
        return state.get("type")

    def set_state(self, state_type: str, message: str, name: str | None = None) -> str | None:
        state = {"type": state_type, "message": message}
        if name:
            state["name"] = name
        result = self._call("POST", f"/flow_runs/{self.flow_run_id}/set_state", json={"state": state})
        return (result or {}).get("status")

    def log(self, message: str, level: int = 40) -> None:
        entry = {
            "name": "dspy_service.job_process",
            "level": level,
            "message": message,
            "timestamp": dt.datetime.now(dt.UTC).isoformat(),
            "flow_run_id": self.flow_run_id,
        }
        self._call("POST", "/logs/", json=[entry])

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


class ForkedEngine:
    """The engine forked from this (warm) supervisor: what of subprocess.Popen the
    supervisor uses (pid, stdout, poll, wait, returncode)."""

    def __init__(self, supervisor: JobSupervisor):
        read, write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        assert_single_threaded()
        pid = os.fork()
        if pid == 0:  # the engine
            code = 1
            try:
                os.close(read)
                code = run_forked_engine(supervisor, write)
            except BaseException:
                with contextlib.suppress(BaseException):
                    import traceback

                    traceback.print_exc()
            finally:
                os._exit(code)
        os.close(write)
        self.pid = pid
        self.stdout = open(read, "rb", buffering=0)  # noqa: SIM115 - closed with the supervisor
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
    import threading

    if threading.active_count() != 1:
        raise RuntimeError(f"cannot fork safely: {threading.active_count()} threads are running")


def close_fds_except(keep: set[int]) -> None:
    """What close_fds=True does for a subprocess: only the descriptors in `keep` survive."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


# Descriptors the zygote's imports opened (none today); the zygote records them so the
# forked engine keeps them like a fresh interpreter would have them.
IMPORT_FDS: set[int] = set()


def run_forked_engine(supervisor: JobSupervisor, output: int) -> int:
    """In the engine child of a warm supervisor: prepare like Popen(start_new_session=True,
    preexec_fn=_prepare_child, close_fds=True, env=...) would, then run `prefect.engine`
    as `python -m prefect.engine` and return its exit code."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(output, 1)
    os.dup2(output, 2)
    close_fds_except({0, 1, 2, *IMPORT_FDS})
    supervisor._prepare_child()
    for signum in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from flows import zygote

    return zygote.run_engine(supervisor.env)


class JobSupervisor:
    def __init__(self, settings: ServiceSettings, environ: Mapping[str, str], relay: Any = None):
        self.settings = settings
        self.flow_run_id = environ.get("PREFECT__FLOW_RUN_ID")
        self.env = scrub_environment(environ, settings.job_env_passthrough)
        # Warm start: the relay's connection (a socket); EOF on it means the worker is gone.
        self.relay = relay
        self.env.pop("DSPY_SERVICE_ZYGOTE_SOCKET", None)  # user code has no business with it
        # glibc reserves up to 8 x cores malloc arenas of 64 MB address space each; on a
        # big host that alone would hit the address-space limit (RLIMIT_AS).
        self.env.setdefault("MALLOC_ARENA_MAX", "4")
        self.limits = JobLimits.from_settings(settings)
        self.reporter = RunReporter(environ, self.flow_run_id)
        self.parent = os.getppid()
        self.engine: subprocess.Popen | ForkedEngine | None = None
        self.cgroup: PidsCgroup | None = None
        self.started = time.monotonic()
        self.timeout = settings.job_timeout_seconds
        # Why we are stopping the job, in user terms; None while it runs on its own.
        self.stop_reason: str | None = None
        self.stop_kind: str | None = None  # cancel | timeout | tasks | worker
        self.stop_deadline: float | None = None
        self.killed = False
        out = sys.stdout.buffer
        limit = int(settings.job_output_limit_mb * 1024 * 1024)
        self.output = HeadTailCap(limit // 2, limit - limit // 2, self._write_out, what="stdout/stderr")
        self.last_output: collections.deque[bytes] = collections.deque(maxlen=64)  # to explain a crash
        self._out = out
        self._out_broken = False

    # -- output --------------------------------------------------------------------------
    def _write_out(self, data: bytes) -> None:
        if self._out_broken or not data:
            return
        try:
            self._out.write(data)
            self._out.flush()
        except (BrokenPipeError, OSError):  # the worker is gone; keep draining the engine
            self._out_broken = True

    def note(self, message: str) -> None:
        now = dt.datetime.now().strftime("%H:%M:%S.%f")[:-3]
        self._write_out(f"{now} [dspy-service job process {os.getpid()}] {message}\n".encode())

    # -- start ---------------------------------------------------------------------------
    def _prepare_child(self) -> None:
        """Runs in the forked child before exec: no threads, no logging, no Python-level locks."""
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != self.supervisor_pid:  # the supervisor died before prctl took effect
            os._exit(137)
        if self.cgroup is not None:
            try:
                self.cgroup.add(os.getpid())
            except OSError:
                pass
        self.limits.apply(nproc=self.cgroup is None)

    def start(self) -> None:
        self.supervisor_pid = os.getpid()
        prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of the job become ours to kill
        self.cgroup = PidsCgroup.create(self.flow_run_id or str(os.getpid()), self.limits.max_tasks)
        if self.relay is not None:
            self.engine = ForkedEngine(self)
        else:
            self.engine = subprocess.Popen(
                ENGINE_COMMAND,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=self._prepare_child,
                close_fds=True,
            )
        watch = f"cgroup v{self.cgroup.version}" if self.cgroup else "process watch"
        how = "forked engine" if self.relay is not None else "started engine"
        self.note(
            f"{how} {self.engine.pid} (memory {self.limits.memory_mb or 'unlimited'} MB, "
            f"tasks {self.limits.max_tasks} via {watch})"
        )
        self._read_job_timeout()

    def _read_job_timeout(self) -> None:
        run = self.reporter.read_run(patience=10)
        job = ((run or {}).get("parameters") or {}).get("job") or {}
        requested = job.get("timeout_seconds")
        if isinstance(requested, (int, float)) and 0 < requested < self.timeout:
            self.timeout = float(requested)

    # -- stopping ------------------------------------------------------------------------
    def request_stop(self, kind: str, reason: str, grace: float | None = None) -> None:
        """Tell the engine to stop now; kill its whole process group after the grace."""
        if self.stop_kind is not None:
            return
        self.stop_kind, self.stop_reason = kind, reason
        grace = self.settings.job_cancel_grace_seconds if grace is None else grace
        self.stop_deadline = time.monotonic() + grace
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

    def _on_terminate(self, signum: int, _frame: Any) -> None:
        # The worker SIGTERMs this process to cancel the run (and on its own shutdown).
        self.request_stop(
            "cancel",
            f"the worker running this job stopped it ({signal_name(signum)}; shutting down?), so the job was "
            "stopped; submit it again",
        )

    def _check(self) -> None:
        now = time.monotonic()
        if self.stop_deadline is not None and not self.killed and now >= self.stop_deadline:
            self.kill()
        if self.stop_kind is not None:
            return
        if self.worker_gone():
            self.request_stop(
                "worker",
                WORKER_GONE_MESSAGE,
                grace=0,
            )
        elif now - self.started > self.timeout:
            self.request_stop(
                "timeout",
                f"the job exceeded its time limit of {describe_seconds(self.timeout)} "
                "(timeout_seconds, or DSPY_SERVICE_JOB_TIMEOUT_SECONDS) and was stopped",
            )
        elif self.cgroup is not None and self.cgroup.limit_hits():
            self._too_many_tasks()
        elif self.cgroup is None and self.engine is not None:
            if count_session_processes(self.engine.pid) > self.limits.max_tasks // 8:
                self._too_many_tasks()

    def worker_gone(self) -> bool:
        if self.relay is None:
            return os.getppid() != self.parent
        import select

        try:
            readable, _, _ = select.select([self.relay], [], [], 0)
            # The relay never sends anything after its request: readable means EOF.
            return bool(readable) and self.relay.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _too_many_tasks(self) -> None:
        self.request_stop(
            "tasks",
            f"the job tried to run more than {self.limits.max_tasks} processes/threads at once (a fork bomb?; "
            "DSPY_SERVICE_JOB_MAX_TASKS) and was stopped",
            grace=0,
        )

    # -- main loop -----------------------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_terminate)
        signal.signal(signal.SIGINT, self._on_terminate)
        for attempt in range(1, ENGINE_START_ATTEMPTS + 1):
            code = self._run_engine()
            if attempt == ENGINE_START_ATTEMPTS or not self._engine_never_reached_api(code):
                break
            self.note(
                "the job's engine could not reach the Prefect API before the job started (a server restart?); "
                f"starting it again in {ENGINE_RESTART_SECONDS:g} s"
            )
            time.sleep(ENGINE_RESTART_SECONDS)
            self.last_output.clear()
        self.output.close()
        self.finish(code)
        self.reporter.close()
        return code if code >= 0 else 128 - code

    def _run_engine(self) -> int:
        """Start the engine, pass its output on until it exits, clean up after it."""
        self.start()
        assert self.engine is not None and self.engine.stdout is not None
        stream = self.engine.stdout
        os.set_blocking(stream.fileno(), False)
        selector = selectors.DefaultSelector()
        selector.register(stream, selectors.EVENT_READ)
        open_stream = True
        exited_at: float | None = None
        while True:
            if open_stream:
                for _ in selector.select(POLL_SECONDS):
                    try:
                        data = os.read(stream.fileno(), 65536)
                    except BlockingIOError:
                        continue
                    if data:
                        self.output.feed(data)
                        self.last_output.append(data[-4096:])
                    else:  # EOF: the engine (and everything sharing its pipe) closed it
                        selector.unregister(stream)
                        open_stream = False
            else:
                time.sleep(POLL_SECONDS / 4)
            self._check()
            if self.engine.poll() is not None:
                # Done once its output is drained; a subprocess it left holding the pipe
                # open gets a moment, then is killed with the rest below.
                exited_at = exited_at or time.monotonic()
                if not open_stream or self.killed or time.monotonic() - exited_at > 1.0:
                    break
        code = self.engine.wait()
        # Whatever the engine left behind (user subprocesses, adopted orphans) goes too.
        kill_job(self.engine.pid, self.cgroup, exclude=None)
        reap_children()
        self._drain(stream)
        with contextlib.suppress(OSError):
            stream.close()
        if self.cgroup is not None:
            self.cgroup.remove()
        return code

    def _engine_never_reached_api(self, code: int) -> bool:
        """The engine gave up at its start because the Prefect API was unreachable (it
        checks the API once, without retries) and the run is still Pending: nothing of
        the job ran, so starting the engine again is safe, and better than failing a job
        the user was promised would wait out a server restart."""
        if code != 1 or self.stop_kind is not None:
            return False
        if "Failed to reach API" not in (self.last_error() or ""):
            return False
        return self.reporter.state_type() == "PENDING"

    def _drain(self, stream) -> None:
        with contextlib.suppress(OSError, ValueError):
            while data := os.read(stream.fileno(), 65536):
                self.output.feed(data)

    # -- the final state -----------------------------------------------------------------
    def finish(self, code: int) -> None:
        """Make sure the run ends in a terminal state that says what happened."""
        # Normally the engine has reported the final state itself; not when it was killed,
        # or when user code ended the process (os._exit) in the middle of the run.
        state = self.reporter.state_type()
        if state is None or state in TERMINAL_STATE_TYPES:
            return
        if state == "CANCELLING":
            if self.stop_kind == "cancel":
                self.reporter.set_state("CANCELLED", "cancelled by the user; the job's processes were stopped")
            return
        message = self.explain(code)
        self.note(message)
        self.reporter.log(message)
        if self.stop_kind == "timeout":
            self.reporter.set_state("FAILED", message, name="TimedOut")
        elif self.stop_kind in ("worker", "cancel"):
            self.reporter.set_state("CRASHED", message)
        else:
            self.reporter.set_state("FAILED", message)

    def explain(self, code: int) -> str:
        if self.stop_reason:
            return self.stop_reason
        if code < 0:
            sig = -code
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and self._cpu_exhausted()):
                return (
                    f"the job used more than its {self.limits.cpu_seconds} s of CPU time "
                    "(DSPY_SERVICE_JOB_CPU_SECONDS) and was stopped"
                )
            if sig == signal.SIGXFSZ:
                return f"the job wrote a file larger than {self.limits.max_file_mb} MB (DSPY_SERVICE_JOB_MAX_FILE_MB)"
            return signal_message(sig, self.limits.memory_mb)
        error = self.last_error()
        if error:
            if any(word in error for word in ("ConnectError", "PrefectHTTPStatusError", "database is locked")):
                return (
                    f"the job process lost the Prefect API and stopped (exit code {code}): {error}; "
                    "submit it again"
                )
            return f"the job process exited with code {code} before the job finished: {error}"
        return (
            f"the job process exited with code {code} before the job finished "
            "(did the signature or metric code call os._exit() or exit the interpreter?)"
        )

    def last_error(self) -> str | None:
        """The last `SomeError: message` line the engine printed, if any."""
        text = b"".join(self.last_output)[-16384:].decode("utf-8", "replace")
        for line in reversed(text.splitlines()):
            match = ERROR_LINE.match(line.strip())
            if match:
                return match.group(0)[:300]
        return None

    def _cpu_exhausted(self) -> bool:
        if not self.limits.cpu_seconds:
            return False
        usage = os.times()
        return usage.children_user + usage.children_system >= self.limits.cpu_seconds


def run_supervisor() -> int:
    return JobSupervisor(get_settings(), os.environ).run()
