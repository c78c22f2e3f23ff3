"""Event-driven pickup for the job worker (deployments/worker.py).

A job is a flow run created in state Scheduled. Instead of waiting up to the worker's
poll interval (PREFECT_WORKER_QUERY_SECONDS), the worker listens to Prefect's event
stream (`/api/events/out`) for `prefect.flow-run.Scheduled` events of its work pool and
scans for runs at once:

- `PickupSignal`: the wake-up the worker's get-and-submit loop waits on, with the normal
  poll interval as timeout; any number of wakes before a scan coalesce into one scan.
- `SubmissionGate`: the Scheduled states this worker has already moved to Pending. A
  scan answered from before that move (a slow response under load) lists the run with
  the same Scheduled state again; the gate skips it, so it is never submitted twice.
  A run scheduled again (a retry) has a new state and passes.
- `ScheduledRunListener`: the subscription; reconnects with `Backoff` after any error.

How it fails: if the event stream is down, refuses us or drops events, nothing waits on
it: the worker still polls every PREFECT_WORKER_QUERY_SECONDS and pickup falls back to
that delay. A listener error is logged (at most once per outage) and retried with
backoff; it never stops the worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from uuid import UUID

SCHEDULED_EVENT = "prefect.flow-run.Scheduled"


class PickupSignal:
    """Wakes the get-and-submit loop; `wait` returns early (True) once woken."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.wakes = 0  # how many wakes arrived (for logs and tests)

    def wake(self) -> None:
        self.wakes += 1
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a wake; consume it. True if woken."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        finally:
            # A wake during the scan that follows must start another scan: clear now,
            # before the scan, never after it.
            woken = self._event.is_set()
            self._event.clear()
        return woken


class SubmissionGate:
    """The (flow run, Scheduled state) pairs this worker moved to Pending; bounded."""

    def __init__(self, size: int = 10_000) -> None:
        self._seen: OrderedDict[tuple[UUID, UUID], None] = OrderedDict()
        self._size = size

    def taken(self, flow_run_id: UUID, state_id: UUID | None) -> None:
        if state_id is None:
            return
        self._seen[(flow_run_id, state_id)] = None
        while len(self._seen) > self._size:
            self._seen.popitem(last=False)

    def already_taken(self, flow_run_id: UUID, state_id: UUID | None) -> bool:
        return state_id is not None and (flow_run_id, state_id) in self._seen


class Backoff:
    """Delays between reconnects: `initial`, doubling up to `maximum`; `reset` on success."""

    def __init__(self, initial: float = 0.5, maximum: float = 30.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self._next = self.initial


# An async context manager that yields an async iterator of events (Prefect's subscriber).
Subscribe = Callable[[], AbstractAsyncContextManager[AsyncIterator[object]]]


class ScheduledRunListener:
    """Subscribe, wake `signal` on every event, reconnect after errors. Runs until cancelled."""

    def __init__(
        self,
        subscribe: Subscribe,
        signal: PickupSignal,
        logger: logging.Logger,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._subscribe = subscribe
        self._signal = signal
        self._logger = logger
        self._backoff = backoff or Backoff()
        self._sleep = sleep
        self.connections = 0  # successful subscriptions (for logs and tests)
        self._failing = False

    async def run(self) -> None:
        while True:
            try:
                async with self._subscribe() as events:
                    self.connections += 1
                    if self.connections == 1 or self._failing:
                        self._logger.info("Event-driven pickup: listening for scheduled runs on the event stream")
                    self._failing = False
                    self._backoff.reset()
                    # What happened while we were away is found by the next scan.
                    self._signal.wake()
                    async for _event in events:
                        self._signal.wake()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any stream error: polling goes on; retry later
                if not self._failing:
                    self._logger.warning(
                        "Event-driven pickup: event stream unavailable (%s: %s); polling continues, retrying",
                        type(exc).__name__, exc,
                    )
                self._failing = True
            await self._sleep(self._backoff.next_delay())


def prefect_subscriber(work_pool_id: UUID) -> Subscribe:
    """Prefect's event subscriber for Scheduled flow runs of the pool `work_pool_id`."""
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventNameFilter

    def subscribe():
        event_filter = EventFilter(
            event=EventNameFilter(name=[SCHEDULED_EVENT]),
            any_resource=EventAnyResourceFilter(id=[f"prefect.work-pool.{work_pool_id}"]),
        )
        # Our listener reconnects with its own backoff; Prefect's retries would only hide errors.
        return get_events_subscriber(filter=event_filter, reconnection_attempts=0)

    return subscribe
