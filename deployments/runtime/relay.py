"""The relay: what the worker runs for every job (`python -m deployments.runtime.relay`).

The work pool's base job template fixes it as the command (deployments/job_template.py),
so the process worker starts this instead of `python -m prefect.engine`. It forks once:

- the parent stays tiny: it relays the worker's signals (SIGTERM = cancel) to the
  supervisor and exits with its exit code. On its own shutdown the worker SIGKILLs the
  processes it started within about a second; this parent takes that blow;
- the child is the job supervisor (supervisor.py): it runs the flow engine
  under limits, stops it on cancel or timeout, and reports why a run ended when the
  engine could not. Seeing its parent gone (the worker died or shut down), it stops the
  job and reports it instead of leaving it running.

Warm start (DSPY_SERVICE_WARM_START, zygote.py): when DSPY_SERVICE_ZYGOTE_SOCKET names
a zygote that answers, the relay does not fork: it hands the zygote its scrubbed
environment, working directory, argv and stdin/stdout/stderr (protocol.py),
the zygote forks the supervisor from its already imported interpreter, and the relay
forwards signals to that supervisor and exits with the exit code the zygote reports.
Closing the connection (the relay exits or is killed with the worker) tells the
supervisor that the worker is gone. If the zygote does not answer (or refuses), the job
starts cold, saying so on stderr. Whatever fails in the supervisor's code, the forked
child exits with 1 and never returns into the relay's code path.
"""

from __future__ import annotations

import os

# Who started us (the worker), read before anything else: if the worker dies while we
# start, the relay must not mistake its new parent for the worker.
SPAWNED_BY = os.getppid()

# The relay lives as long as its job, and each module it imports costs every job memory
# and start time: the cold path needs only these; the warm path imports the rest when used.
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

POLL_SECONDS = 0.2
# How long the zygote may take to fork the job's supervisor and say so.
HANDOVER_SECONDS = 30


def relay_until_exit(child: int) -> int:
    """Pass signals to the supervisor; exit with its code, or early if the worker died."""

    def relay(signum: int, _frame: object) -> None:
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, relay)
    signal.signal(signal.SIGINT, relay)
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
        leave_if_worker_gone()
        time.sleep(POLL_SECONDS)


class WarmStart:
    """One job handed to the zygote at `path`: connect, send the request, learn the
    supervisor's pid, then pass the worker's signals to it until the zygote reports its
    exit. Signals that arrive before the pid is known are kept and passed on after."""

    def __init__(self, path: str):
        import socket

        from deployments.runtime.protocol import LineReader

        self.path = path
        self.supervisor: int | None = None
        self.pending: list[int] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.reader = LineReader(self.sock)

    def relay(self, signum: int, _frame: object) -> None:
        if self.supervisor is None:
            self.pending.append(signum)
            return
        try:
            os.kill(self.supervisor, signum)
        except ProcessLookupError:
            pass

    def hand_over(self) -> int:
        """Send this job to the zygote; the supervisor's pid (OSError/ValueError if refused)."""
        from deployments.runtime.env import scrub_own_environment
        from deployments.runtime.protocol import send_request

        self.sock.settimeout(5)
        self.sock.connect(self.path)
        # Scrubbed here: the zygote and every job forked from it never hold the worker's secrets.
        env = scrub_own_environment(os.environ)
        request = {"env": env, "cwd": os.getcwd(), "argv": sys.argv, "relay_pid": os.getpid()}
        send_request(self.sock, request, [0, 1, 2])
        deadline = time.monotonic() + HANDOVER_SECONDS
        while (line := self.reader.line()) is None:
            if self.reader.eof or time.monotonic() > deadline:
                raise ConnectionError("no answer")
            self.sock.settimeout(max(0.1, deadline - time.monotonic()))
            self.reader.feed()
        if not line.startswith("pid "):
            raise ConnectionError(line)
        return int(line.split()[1])

    def wait_for_exit(self, supervisor: int) -> int:
        """The supervisor's exit code as the zygote reports it."""
        import select

        self.sock.setblocking(False)
        while True:
            ready, _, _ = select.select([self.sock], [], [], POLL_SECONDS)
            if ready:
                self.reader.feed()
            while (line := self.reader.line()) is not None:
                if line.startswith("exit "):
                    return int(line.split()[1])
            if self.reader.eof:
                return wait_for_orphan(supervisor)
            leave_if_worker_gone()


def wait_for_orphan(supervisor: int) -> int:
    """The zygote went away before the job's supervisor ended: the supervisor keeps running
    (adopted by init or a subreaper); wait for it, its code is lost."""
    from deployments.runtime import procfs

    print("dspy-service: the zygote went away while the job ran; waiting for its supervisor", file=sys.stderr)
    while not procfs.process_gone(supervisor):
        leave_if_worker_gone()
        time.sleep(POLL_SECONDS)
    return 1


def leave_if_worker_gone() -> None:
    if os.getppid() != SPAWNED_BY:
        # The worker is gone: leave, closing the connection, so the supervisor reports.
        os._exit(1)


def warm_start(path: str) -> int | None:
    """Run the job through the zygote at `path`; None if it cannot take it (start cold)."""
    start = WarmStart(path)
    previous = {sig: signal.signal(sig, start.relay) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        supervisor = start.hand_over()
    except (OSError, ValueError) as exc:
        start.sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print(f"dspy-service: warm start unavailable ({path}: {exc}); starting the job cold", file=sys.stderr)
        if start.pending:  # cancelled while we tried: let the cold path see it at once
            signal.raise_signal(start.pending[0])
        return None
    start.supervisor = supervisor
    for signum in start.pending:
        start.relay(signum, None)
    return start.wait_for_exit(supervisor)


def main() -> int:
    sys.stdout.flush()
    path = os.environ.get("DSPY_SERVICE_ZYGOTE_SOCKET")
    if path:
        code = warm_start(path)
        if code is not None:
            return code
    supervisor = os.fork()
    if supervisor:
        return relay_until_exit(supervisor)
    try:
        from deployments.runtime.supervisor import run_supervisor

        code = run_supervisor()
    except BaseException:  # never return into the relay's code path
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
