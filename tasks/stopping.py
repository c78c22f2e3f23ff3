"""Cooperative stop of a running job.

The job's supervisor (deployments/runtime/) sends STOP_SIGNAL (dspy_service/contract.py) to the engine process
when the job is cancelled or runs out of time, then kills the whole process group after
a short grace period. In that window the job stops on its own terms: every LM call not
yet sent is refused (MeteredLM checks `raise_if_stopped`), and GEPA ends its search at
the next iteration boundary through a stop callback instead of starting another round.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

from dspy_service.contract import STOP_SIGNAL

_stop = threading.Event()


class JobStopped(RuntimeError):
    """Raised instead of making an LM call once the job has been told to stop."""


def request_stop(*_: Any) -> None:
    _stop.set()


def stop_requested() -> bool:
    return _stop.is_set()


def raise_if_stopped() -> None:
    if _stop.is_set():
        raise JobStopped("the job is being stopped (cancelled or out of time): no new LM calls")


def wait_to_be_stopped(limit: float = 60.0) -> None:
    """Block until the wrapper kills this process (it does so within its grace period)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(0.1)


def install_stop_handler() -> bool:
    """Listen for STOP_SIGNAL; only possible in the main thread (where the flow runs)."""
    try:
        signal.signal(STOP_SIGNAL, request_stop)
    except ValueError:  # not the main thread (e.g. a flow called from a test thread)
        return False
    return True


def reset() -> None:
    """For tests that run several flows in one process."""
    _stop.clear()


class StopGEPAOnRequest:
    """A GEPA `StopperProtocol`: True once the job was told to stop."""

    def __call__(self, gepa_state: Any) -> bool:
        return _stop.is_set()
