"""The job worker's REST heartbeat, sent every interval beside Prefect's worker channel.

Why: Prefect 3.9 sends a worker's heartbeats over its worker channel (a websocket) and uses
REST only while the channel is down. On SQLite the server persists every heartbeat, channel
or REST, by a read and then a write in one deferred transaction, which SQLite fails at once
("database is locked") whenever another write commits in between; job engines write
states and logs all the time. A failed channel heartbeat closes the channel (reconnect after
1, 2, 4... s); a failed REST one is a 503 that Prefect's client retries after 2, 4, 8... s.
Measured in the hostile-code reliability test (9 jobs at once, SQLite): 4-9 channel
heartbeats lost per run and the newest stored heartbeat up to 10.7 s old with the channel
alone. A failed REST attempt itself takes 2-4 s there, so waiting out the client's backoff
left it up to 19.6 s old, past the 3 intervals (15 s) after which Prefect and the API's
/health count the worker offline. With this module: at most 8.6 s (docs/BENCHMARKS.md,
"Worker heartbeats under SQLite write load").

The rule: one REST heartbeat per interval, and a failed one is retried at once (0.1 s, then
doubling to 1 s) instead of after Prefect's backoff, until one lands: a conflict is
transient, so a retry a moment later lands. The next heartbeat is due an interval after the
previous round began, so the newest persisted heartbeat is at most about an interval plus
one request old. The client's own retries are off for these requests (the loop is the
retry).

How it fails: never fatally. An interval in which nothing landed is a warning (once per
outage) and the retries go on; the channel's heartbeats go on too. On
PostgreSQL a heartbeat does not conflict, so this is one extra request per interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import anyio
import prefect.context
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES

FIRST_RETRY_SECONDS = 0.1
MAX_RETRY_SECONDS = 1.0


class RestHeartbeat:
    """Sends `send()` every `interval` seconds; a failed one is retried at once until one lands."""

    def __init__(
        self, send: Callable[[], Awaitable[object]], interval: float, logger: logging.Logger | logging.LoggerAdapter
    ):
        self.send = send
        self.interval = interval
        self.logger = logger
        self.failing_since: float | None = None
        self.no_client_retries: prefect.context.SettingsContext | None = None

    def without_client_retries(self) -> prefect.context.SettingsContext:
        """The current settings with PREFECT_CLIENT_MAX_RETRIES=0, for this task only (a context
        variable). Built once: a settings copy takes 0.3-0.5 s here, entering it ~0.3 ms."""
        if self.no_client_retries is None:
            current = prefect.context.get_settings_context()
            settings = current.settings.copy_with_update(updates={PREFECT_CLIENT_MAX_RETRIES: 0})
            self.no_client_retries = prefect.context.SettingsContext(profile=current.profile, settings=settings)
        return self.no_client_retries

    async def run(self) -> None:
        """A round every interval, timed from the round's start: a round that spent its
        interval on retries is followed by the next at once, not after another interval."""
        while True:
            started = time.monotonic()
            await self.beat(deadline=started + self.interval)
            await anyio.sleep(max(0.0, started + self.interval - time.monotonic()))

    async def beat(self, deadline: float) -> None:
        """One round: returns once a heartbeat landed or the deadline came first."""
        delay = FIRST_RETRY_SECONDS
        while True:
            try:
                with self.without_client_retries():
                    await self.send()
            except Exception as exc:  # a conflict or an unreachable server: try again
                if time.monotonic() + delay >= deadline:
                    self.gave_up(exc)
                    return
                await anyio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)
                continue
            if self.failing_since is not None:
                outage = time.monotonic() - self.failing_since
                self.logger.info("REST worker heartbeat landed again after %.0f s", outage)
                self.failing_since = None
            return

    def gave_up(self, exc: Exception) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            self.logger.warning(
                "No REST worker heartbeat landed within %s s (last error %s: %s); retrying every interval",
                self.interval, type(exc).__name__, exc,
            )
