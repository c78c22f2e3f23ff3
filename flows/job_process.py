"""The job process: what the worker runs for every job (`python -m flows.job_process`).

prefect.yaml sets it as the deployment's `command` job variable, so the process worker
starts this instead of `python -m prefect.engine`. It forks once:

- the parent stays tiny: it relays the worker's signals (SIGTERM = cancel) to the
  supervisor and exits with its exit code. On its own shutdown the worker SIGKILLs the
  processes it started within about a second; this parent takes that blow;
- the child is the job supervisor (flows/job_supervisor.py): it runs the flow engine
  under limits, stops it on cancel or timeout, and reports why a run ended when the
  engine could not. Seeing its parent gone (the worker died or shut down), it stops the
  job and reports it instead of leaving it running.

Warm start (DSPY_SERVICE_WARM_START, flows/zygote.py): when DSPY_SERVICE_ZYGOTE_SOCKET
names a zygote that answers, the relay does not fork: it hands the zygote its
environment, working directory, argv and stdin/stdout/stderr (flows/warm_protocol.py),
the zygote forks the supervisor from its already imported interpreter, and the relay
forwards signals to that supervisor and exits with the exit code the zygote reports.
Closing the connection (the relay exits or is killed with the worker) tells the
supervisor that the worker is gone. If the zygote does not answer, the job starts cold.
"""

from __future__ import annotations

import os

# Who started us (the worker), read before anything else: if the worker dies while we
# start, the relay must not mistake its new parent for the worker.
SPAWNED_BY = os.getppid()

import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

POLL_SECONDS = 0.2


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
        if os.getppid() != SPAWNED_BY:
            # The worker is gone: leave, so the supervisor sees its parent gone and reports.
            os._exit(1)
        time.sleep(POLL_SECONDS)


def warm_start(path: str) -> int | None:
    """Run the job through the zygote at `path`; None if it cannot take it (start cold)."""
    import select
    import socket

    from flows.job_env import scrub_own_environment
    from flows.warm_protocol import LineReader, send_request

    supervisor: int | None = None
    pending: list[int] = []

    def relay(signum: int, _frame: object) -> None:
        if supervisor is None:
            pending.append(signum)
            return
        try:
            os.kill(supervisor, signum)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, relay) for sig in (signal.SIGTERM, signal.SIGINT)}
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    reader = LineReader(sock)
    try:
        sock.settimeout(5)
        sock.connect(path)
        # Scrubbed here: the zygote and every job forked from it never hold the worker's secrets.
        env = scrub_own_environment(os.environ)
        request = {"env": env, "cwd": os.getcwd(), "argv": sys.argv, "relay_pid": os.getpid()}
        send_request(sock, request, [0, 1, 2])
        deadline = time.monotonic() + 30
        while (line := reader.line()) is None:
            if reader.eof or time.monotonic() > deadline:
                raise ConnectionError("no answer")
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            reader.feed()
        if not line.startswith("pid "):
            raise ConnectionError(line)
        supervisor = int(line.split()[1])
    except (OSError, ValueError) as exc:
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print(f"dspy-service: warm start unavailable ({path}: {exc}); starting the job cold", file=sys.stderr)
        if pending:  # cancelled while we tried: let the cold path see it at once
            signal.raise_signal(pending[0])
        return None
    for signum in pending:
        relay(signum, None)
    sock.setblocking(False)
    while True:
        ready, _, _ = select.select([sock], [], [], POLL_SECONDS)
        if ready:
            reader.feed()
        while (line := reader.line()) is not None:
            if line.startswith("exit "):
                return int(line.split()[1])
        if reader.eof:
            # The zygote went away before the job's supervisor ended: the supervisor keeps
            # running (adopted by init or a subreaper); wait for it, its code is lost.
            print("dspy-service: the zygote went away while the job ran; waiting for its supervisor", file=sys.stderr)
            while not process_gone(supervisor):
                if os.getppid() != SPAWNED_BY:
                    os._exit(1)
                time.sleep(POLL_SECONDS)
            return 1
        if os.getppid() != SPAWNED_BY:
            # The worker is gone: leave, closing the connection, so the supervisor reports.
            os._exit(1)


def process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except OSError:
        return True


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
        from flows.job_supervisor import run_supervisor

        code = run_supervisor()
    except BaseException:  # never return into the relay's code path
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
