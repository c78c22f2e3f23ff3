"""Event-driven pickup's parts: the wake-up, the submission gate, the listener's reconnects.

The listener runs here on a stand-in event stream (its logic only); that a real Prefect
event wakes a real worker is tests/integration/test_event_pickup.py."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import asynccontextmanager

import pytest

from deployments.pickup import Backoff, PickupSignal, ScheduledRunListener, SubmissionGate


def test_a_wake_ends_the_wait_at_once_and_is_consumed():
    async def scenario():
        signal = PickupSignal()
        signal.wake()
        started = time.monotonic()
        assert await signal.wait(5.0) is True
        assert time.monotonic() - started < 0.5
        # Consumed: the next wait runs to its timeout.
        started = time.monotonic()
        assert await signal.wait(0.2) is False
        assert time.monotonic() - started >= 0.19

    asyncio.run(scenario())


def test_wakes_before_a_scan_coalesce_and_a_wake_during_the_scan_starts_another():
    async def scenario():
        signal = PickupSignal()
        for _ in range(30):  # 30 jobs submitted at once: one scan, not 30
            signal.wake()
        assert await signal.wait(1.0) is True
        assert await signal.wait(0.05) is False
        # A wake arriving while the loop scans (after wait returned) is kept for the next wait.
        signal.wake()
        assert await signal.wait(0.01) is True

    asyncio.run(scenario())


def test_a_wake_from_another_task_ends_a_pending_wait():
    async def scenario():
        signal = PickupSignal()
        asyncio.get_running_loop().call_later(0.05, signal.wake)
        started = time.monotonic()
        assert await signal.wait(5.0) is True
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 1.0


def test_the_gate_skips_a_scheduled_state_already_moved_to_pending_but_not_a_new_one():
    gate = SubmissionGate()
    run, scheduled, rescheduled = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert not gate.already_taken(run, scheduled)
    gate.taken(run, scheduled)
    assert gate.already_taken(run, scheduled)  # a stale scan lists it again: skipped
    assert not gate.already_taken(run, rescheduled)  # scheduled again (a retry): submitted
    assert not gate.already_taken(uuid.uuid4(), scheduled)
    gate.taken(run, None)  # a run without a state is never gated
    assert not gate.already_taken(run, None)


def test_the_gate_is_bounded_and_forgets_the_oldest():
    gate = SubmissionGate(size=3)
    pairs = [(uuid.uuid4(), uuid.uuid4()) for _ in range(4)]
    for pair in pairs:
        gate.taken(*pair)
    assert not gate.already_taken(*pairs[0])
    assert all(gate.already_taken(*pair) for pair in pairs[1:])


def test_backoff_doubles_up_to_its_maximum_and_resets():
    backoff = Backoff(initial=0.5, maximum=4.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


class Stream:
    """A stand-in event stream: fails to connect `failures` times, then yields `events`
    and ends (a dropped connection), then blocks on the following connection."""

    def __init__(self, failures: int, events: int):
        self.failures = failures
        self.events = events
        self.attempts = 0

    @asynccontextmanager
    async def subscribe(self):
        self.attempts += 1
        if self.attempts <= self.failures:
            raise ConnectionRefusedError("server down")
        yield self._events(self.attempts == self.failures + 1)

    async def _events(self, first: bool):
        if first:
            for _ in range(self.events):
                yield object()
        else:
            await asyncio.Event().wait()


def run_listener(stream: Stream, until, caplog) -> tuple[ScheduledRunListener, PickupSignal, list[float]]:
    delays: list[float] = []
    signal = PickupSignal()

    async def sleep(delay: float) -> None:
        delays.append(delay)
        await asyncio.sleep(0)

    async def scenario():
        logger = logging.getLogger("pickup-test")
        listener = ScheduledRunListener(stream.subscribe, signal, logger, Backoff(1, 8), sleep)
        task = asyncio.create_task(listener.run())
        for _ in range(1000):
            await asyncio.sleep(0.001)
            if until(listener):
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return listener

    with caplog.at_level(logging.INFO, logger="pickup-test"):
        listener = asyncio.run(scenario())
    return listener, signal, delays


def test_the_listener_reconnects_with_backoff_and_wakes_on_each_event(caplog):
    stream = Stream(failures=4, events=3)
    listener, signal, delays = run_listener(stream, lambda listener: listener.connections >= 2, caplog)
    # Four refused connections: growing delays; the connection that worked reset them.
    assert delays[:4] == [1, 2, 4, 8]
    assert delays[4] == 1  # after the stream ended, the backoff starts over
    # A wake on connecting (runs scheduled while away) and one per event.
    assert signal.wakes == 1 + 3 + 1
    warnings = [r for r in caplog.records if "event stream unavailable" in r.getMessage()]
    assert len(warnings) == 1, "an outage is logged once, not once per attempt"
    assert "polling continues" in warnings[0].getMessage()
    assert any("listening for scheduled runs" in r.getMessage() for r in caplog.records)


def test_the_listener_never_stops_on_errors(caplog):
    stream = Stream(failures=10_000, events=0)
    listener, signal, delays = run_listener(stream, lambda listener: stream.attempts > 20, caplog)
    assert stream.attempts > 20 and listener.connections == 0
    assert max(delays) == 8 and signal.wakes == 0
