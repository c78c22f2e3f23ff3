"""Warm start: the zygote, a pre-imported parent that forks job supervisors on request.

    python -u -m deployments.runtime.zygote --socket PATH

Started next to each worker when warm start is on (the default; off with
DSPY_SERVICE_WARM_START=false or `dspy-service up/worker --cold-start`; deployments/stack.py).
It imports Prefect, the engine, DSPy, the supervisor and the flow entrypoint once, starts
no thread, event loop or HTTP client, and listens on a Unix socket (0600) whose path the
worker's jobs find in DSPY_SERVICE_ZYGOTE_SOCKET.

For each job the relay (relay.py, still what the stock process worker launches) sends its
environment, cwd, argv and stdin/stdout/stderr (protocol.py). The zygote forks; the child
takes over those descriptors, environment and directory and becomes that job's supervisor
(supervisor.py) with a `ForkStarter` (engine.py), which forks the engine from itself and
runs `prefect.engine` in it (`run_engine` here) instead of exec'ing `python -m
prefect.engine`. With the sandbox on, the zygote instead hands the job to an idle warm
slot (warm_slots.py: a supervisor forked before the job, its sandbox already imported) and
forks a supervisor only when none is idle. The zygote reaps the supervisor and sends its
exit code to the relay. A job crashing takes only its own forks with it; a bad request is
refused and logged; the zygote keeps serving. Imports that start a thread make the zygote exit with 1 at start
(forking would be unsafe); the relay then starts its jobs cold.

The zygote itself runs with the job's scrubbed environment (deployments/stack.py), so the
forks' /proc/<pid>/environ, which shows the environment their image was exec'd with,
holds no worker secrets either.

Code changed on disk is not seen by a running zygote: restart the worker (and its zygote)
after an upgrade, as for the worker itself.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from deployments.runtime import prefect_heartbeats, procfs
from deployments.runtime.adopt import adopt_environment, remember_logging_inputs
from deployments.runtime.engine import ForkStarter, assert_single_threaded
from deployments.runtime.limits import exited_children
from deployments.runtime.protocol import exit_code, recv_request
from deployments.runtime.warm_slots import SlotPool, hand_off_fds, run_slot, sweep_staged_results
from dspy_service.tls import share_prefect_tls_contexts

if TYPE_CHECKING:
    from deployments.runtime.warm_sandbox import WarmSandbox

# What the engine and the flow import, paid once here instead of once per job.
PRELOAD = (
    "prefect",
    "prefect.engine",
    "prefect.flow_engine",
    "dspy",
    "deployments.runtime.supervisor",
    "flows.optimize",
    "flows.batch_predict",
)

# What a job imports later on (measured: modules new in a forked engine at its exit), so
# that no job pays for them either. Missing ones are skipped.
PRELOAD_LAZY = (
    "prefect.task_engine",
    "prefect.artifacts",
    "prefect.utilities.visualization",
    "prefect._internal.observers",
    "prefect._internal.states",
    "prefect._internal._observation_delivery",
    "anyio._backends._asyncio",
    "anyio.streams.memory",
    "anyio.streams.stapled",
    "anyio.streams.tls",
    "diskcache",
    "dspy.clients.call_result",
    "dspy.clients.costs",
    "dspy.clients.disk_serialization",
    "dspy.clients.engines.streaming",
    "dspy.clients.execution",
    "dspy._vendor.lm15.cloud",
    "fsspec.implementations.chained",
    "multiprocessing.synchronize",
    "pandas.core.methods.to_dict",
    "pickletools",
    "pyarrow.pandas_compat",
    "rich._emoji_codes",
    "sqlite3",
)

# Descriptors the zygote's imports opened (none today): a forked engine keeps them, as a
# fresh interpreter that made the same imports would have them.
PRELOADED_FDS: set[int] = set()


def log(message: str) -> None:
    now = time.strftime("%H:%M:%S")
    print(f"{now} [dspy-service zygote {os.getpid()}] {message}", file=sys.stderr, flush=True)


def preload() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    for name in PRELOAD_LAZY:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    # Prefect's clients of every job share one verifying context, built here before any job.
    share_prefect_tls_contexts(prebuild=True)
    prefect_heartbeats.install()  # the engine exits at once after its final state
    PRELOADED_FDS.update(procfs.open_fds())
    remember_logging_inputs()


# -- in the forked children -----------------------------------------------------------------


def become_supervisor(conn: socket.socket, request: dict, fds: list[int], warm: WarmSandbox | None = None) -> int:
    """In the zygote's child (or a warm slot, with its sandbox): take over the relay's
    stdio, environment and cwd, and supervise the job."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.chdir(request.get("cwd") or "/")
    sys.argv = list(request.get("argv") or ["-m"])
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    # The relay's full environment lives on only in os.environ, which the engine child
    # replaces with the scrubbed one: nothing of it is reachable from the engine's objects.
    adopt_environment(request.pop("env", None) or {}, engine=False)
    request.clear()
    from deployments.runtime.stop import RelayWatch
    from deployments.runtime.supervisor import JobSupervisor
    from dspy_service.settings import get_settings

    starter = ForkStarter(run_engine, keep_fds=frozenset(PRELOADED_FDS))
    return JobSupervisor(get_settings(), os.environ, starter, RelayWatch(conn), warm=warm).run()


def run_engine(env: dict[str, str]) -> int:
    """In the engine child: run prefect.engine as `python -m prefect.engine` would, and
    finish like the interpreter would (thread joins, atexit) before os._exit."""
    import atexit
    import runpy
    import warnings

    adopt_environment(env)
    sys.argv = ["-m"]
    code = 0
    try:
        with warnings.catch_warnings():
            # "'prefect.engine' found in sys.modules ...": it was imported here on purpose.
            warnings.filterwarnings("ignore", category=RuntimeWarning, module="runpy")
            runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = system_exit_code(exc)
    except KeyboardInterrupt:
        import traceback

        traceback.print_exc()
        code = 128 + signal.SIGINT
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    with contextlib.suppress(BaseException):
        threading._shutdown()  # type: ignore[attr-defined]  # join non-daemon threads, as at exit
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    return code


def system_exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1


# -- the zygote ---------------------------------------------------------------------------


class Zygote:
    def __init__(self, path: str, warm_sandboxes: int = 0):
        self.path = path
        self.jobs: dict[int, socket.socket] = {}  # supervisor pid -> its relay's connection
        self.slots = SlotPool(warm_sandboxes, self.fork_slot, log) if warm_sandboxes else None
        self.stopping = False
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def check_free(self) -> None:
        """Refuse to start beside a live zygote on the same path; remove a stale socket."""
        with contextlib.suppress(FileNotFoundError):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.path)
            except OSError:
                os.unlink(self.path)  # stale socket of a zygote that died
            else:
                raise SystemExit(f"another zygote is listening on {self.path}")
            finally:
                probe.close()

    def listen(self) -> None:
        self.check_free()
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        old = os.umask(0o177)
        try:
            self.listener.bind(self.path)
        finally:
            os.umask(old)
        self.listener.listen(64)

    def serve(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        log(f"ready on {self.path} ({len(sys.modules)} modules imported)")
        while not self.stopping:
            try:
                ready, _, _ = select.select([self.listener], [], [], 0.05)
            except InterruptedError:
                ready = []
            if ready and not self.stopping:
                self.accept()
            self.reap()
            if self.slots is not None and not self.stopping:
                self.slots.fill()
        self.close()

    def _stop(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        fds: list[int] = []
        try:
            conn.settimeout(5)
            request, fds = recv_request(conn)
            conn.settimeout(None)
            pid = self.slots.hand(request, hand_off_fds(conn, fds)) if self.slots is not None else None
            if pid is None:
                pid = self.fork_supervisor(conn, request, fds)
            conn.sendall(f"pid {pid}\n".encode())
        except EOFError:
            conn.close()
            return
        except Exception as exc:  # a bad or vanished client must not stop the zygote
            log(f"request refused: {exc!r}")
            with contextlib.suppress(OSError):
                conn.sendall(f"error {type(exc).__name__}\n".encode())
            conn.close()
            return
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.jobs[pid] = conn

    def fork_supervisor(self, conn: socket.socket, request: dict, fds: list[int]) -> int:
        return self.fork(lambda: become_supervisor(conn, request, fds))

    def fork_slot(self, sock: socket.socket) -> int:
        return self.fork(lambda: run_slot(sock, become_supervisor, log))

    def fork(self, child: Callable[[], int]) -> int:
        """Fork a child that runs `child` with none of the zygote's sockets but its own."""
        assert_single_threaded()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            return pid
        code = 1
        try:
            self.listener.close()
            for other in self.jobs.values():
                other.close()
            if self.slots is not None:
                self.slots.close()
            code = child()
        except BaseException:
            with contextlib.suppress(BaseException):
                import traceback

                traceback.print_exc()
        finally:
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def reap(self) -> None:
        """Tell each finished supervisor's relay its exit code; notice slots that died idle."""
        if not self.jobs and (self.slots is None or not self.slots.idle):
            return
        for pid, status in exited_children():
            if self.slots is not None and self.slots.died_idle(pid, exit_code(status)):
                continue
            conn = self.jobs.pop(pid, None)
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.sendall(f"exit {exit_code(status)}\n".encode())
                conn.close()

    def close(self) -> None:
        if self.slots is not None:
            self.slots.close()
        with contextlib.suppress(OSError):
            self.listener.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        log(f"stopped ({len(self.jobs)} job supervisors still running keep running on their own)")


def warm_sandbox_count() -> int:
    """Idle warm slots to keep (warm_slots.py): none without the sandbox."""
    from dspy_service.settings import get_settings

    settings = get_settings()
    if settings.sandbox == "off":
        return 0
    return settings.job_slots if settings.warm_sandboxes is None else settings.warm_sandboxes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="dspy-service warm-start zygote")
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    args = parser.parse_args(argv)
    started = time.monotonic()
    zygote = Zygote(args.socket, warm_sandbox_count())
    zygote.check_free()  # before the imports: a second zygote on the same path fails fast
    preload()
    if threading.active_count() != 1:
        log(f"imports started {threading.active_count() - 1} thread(s); forking would be unsafe")
        return 1
    log(f"imported {', '.join(PRELOAD)} in {time.monotonic() - started:.2f} s")
    if zygote.slots is not None:
        sweep_staged_results(log)
    zygote.listen()  # connectable only once warm: readiness checks can connect
    zygote.serve()
    return 0


if __name__ == "__main__":
    # Run as the module `deployments.runtime.zygote` (not `__main__`), so that the forked
    # children find its state (PRELOADED_FDS, the logging inputs in adopt.py) when they import it.
    from deployments.runtime.zygote import main as _main

    sys.exit(_main())
