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


def main() -> int:
    sys.stdout.flush()
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
