"""A flow run's heartbeats, stopped as soon as the run's body ends.

Prefect 3.9.1's sync flow engine sends a run's heartbeats from a thread that sleeps in 1 s
steps and joins it (timeout 2 s) when the run's context exits, after the final state: the
engine waits for the step under way, up to 1 s (0.89-0.99 s for a short run,
`bench/job_cpu.py --floor`), and the worker's slot stays taken until the process exits.
`install()` gives `prefect.flow_engine` a `_send_heartbeats` that behaves the same (the
same heartbeat events at the same interval from the same kind of thread, none once the
run's state is final, the join on exit) but whose wait wakes when the context ends.

Called in every sandboxed engine before `prefect.engine` runs (the zygote's preload for
warm slots, sandbox_entry for a cold one). How it fails: on a Prefect without
`flow_engine._send_heartbeats` (another version) `install()` changes nothing and returns
False; the heartbeats are then Prefect's own, 1 s steps included.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

JOIN_TIMEOUT = 2.0  # as Prefect's


@contextmanager
def send_heartbeats(engine: Any, join_on_exit: bool = True) -> Generator[None, None, None]:
    """Prefect's `_send_heartbeats` with a wait that ends when the context does."""
    from prefect import flow_engine

    if engine.heartbeat_seconds is None:
        yield
        return
    interval = max(engine.heartbeat_seconds, flow_engine.MINIMUM_HEARTBEAT_INTERVAL)
    resource, related = engine._build_heartbeat_event_template()
    stopped = threading.Event()

    def beat() -> None:
        while not stopped.is_set():
            state = engine.flow_run.state if engine.flow_run else None
            if state is not None and state.is_final():
                return  # a final state gets no heartbeat (Prefect's rule)
            try:
                engine._emit_flow_run_heartbeat(resource, related)
            except Exception:  # noqa: BLE001  as Prefect's: a lost heartbeat is logged at debug
                engine.logger.debug("Failed to emit heartbeat", exc_info=True)
            stopped.wait(interval)

    # The thread runs in a copy of this context: it sees the run's settings (PREFECT_API_URL).
    thread = threading.Thread(target=contextvars.copy_context().run, args=(beat,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stopped.set()
        if join_on_exit:
            thread.join(timeout=JOIN_TIMEOUT)


def install() -> bool:
    """Replace Prefect's `_send_heartbeats` with `send_heartbeats`; False when there is none."""
    from prefect import flow_engine

    if not callable(getattr(flow_engine, "_send_heartbeats", None)):
        return False
    flow_engine._send_heartbeats = send_heartbeats
    return True
