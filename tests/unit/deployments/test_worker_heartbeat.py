"""The job worker's REST heartbeat (deployments/worker_heartbeat.py): one every interval,
a failed one retried at once within its interval, never fatal.

Measured end to end (heartbeat ages under the hostile-code test's load): docs/BENCHMARKS.md."""

from __future__ import annotations

import asyncio
import logging
import time

import anyio
import prefect.exceptions
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES

from deployments import worker_heartbeat
from deployments.worker_heartbeat import RestHeartbeat

LOGGER = logging.getLogger("test-worker-heartbeat")


class Server:
    """What the Prefect server answers: the calls numbered in `failing` are a 503
    "database is locked" (a conflict), or every call while `down`."""

    def __init__(self, failing=(), down=False):
        self.failing = set(failing)
        self.down = down
        self.calls: list[tuple[float, int]] = []  # (monotonic time, the client's max retries)

    async def send(self):
        self.calls.append((time.monotonic(), PREFECT_CLIENT_MAX_RETRIES.value()))
        if self.down or len(self.calls) in self.failing:
            raise prefect.exceptions.PrefectHTTPStatusError("503 Service Unavailable", request=None, response=None)


def run_for(heartbeat: RestHeartbeat, seconds: float) -> None:
    async def scenario():
        with anyio.move_on_after(seconds):
            await heartbeat.run()

    asyncio.run(scenario())


def test_a_conflict_is_retried_at_once_not_after_the_clients_backoff(monkeypatch):
    monkeypatch.setattr(worker_heartbeat, "FIRST_RETRY_SECONDS", 0.01)
    server = Server(failing={2, 3})
    heartbeat = RestHeartbeat(server.send, 0.3, LOGGER)
    heartbeat.without_client_retries()  # built once (~0.5 s), outside the timed part
    run_for(heartbeat, 1.8)
    times = [t for t, _ in server.calls]
    # Round 1 lands; round 2 fails twice and lands on its second retry, well within its interval.
    assert len(times) >= 5
    assert times[3] - times[1] < 0.25, "the failed heartbeat was not retried within its interval"
    assert times[4] - times[1] >= 0.28, "after a heartbeat lands, the next is due an interval after its round began"
    # Prefect's client must not retry these itself (2, 4, 8 s): the loop is the retry.
    assert {retries for _, retries in server.calls} == {0}
    assert PREFECT_CLIENT_MAX_RETRIES.value() > 0, "the setting leaked out of the heartbeat"


def test_a_server_down_for_a_while_is_one_warning_and_the_heartbeats_come_back(monkeypatch, caplog):
    monkeypatch.setattr(worker_heartbeat, "MAX_RETRY_SECONDS", 0.05)
    server = Server(down=True)
    heartbeat = RestHeartbeat(server.send, 0.2, LOGGER)

    async def scenario():
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(heartbeat.run)
            await anyio.sleep(1.0)  # ~4 rounds with nothing landing
            assert caplog.text.count("No REST worker heartbeat landed within 0.2 s") == 1
            server.down = False
            calls_when_back, back_at = len(server.calls), time.monotonic()
            await anyio.sleep(0.5)
            # Retries go on across intervals: the first one after the outage lands at once.
            assert server.calls[calls_when_back][0] - back_at < 0.2
            # The round in progress lands, then one per interval (fewer if this machine is slow).
            assert 1 <= len(server.calls) - calls_when_back <= 3, "not one heartbeat per interval once it lands"
            tasks.cancel_scope.cancel()

    with caplog.at_level(logging.INFO, logger=LOGGER.name):
        asyncio.run(scenario())
    assert "REST worker heartbeat landed again" in caplog.text
    assert heartbeat.failing_since is None
