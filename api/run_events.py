"""Keeps the read model (api/run_cache.py) current and reads through it.

- `RunReadModel.get`: a job's run from the read model, else from Prefect (one round trip,
  through `JobGateway.get`: the same checks that it is a job) and kept.
- `listen_forever`: Prefect's event stream (`/api/events/out`, flow-run events) drops the
  entry of each run an event names; (re)connecting empties the read model.
- `reconcile_forever`: every max_age / 3, one filter request re-reads the entries served
  lately; runs Prefect no longer has (deleted) go.

How it fails: if the event stream refuses us, drops or closes, the read model stops
serving (every GET reads Prefect) and the listener reconnects with backoff, logging once
per outage; a failed reconcile read is logged and retried next round (entries it did not
refresh age out into read-throughs). Neither ever fails a request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any
from uuid import UUID

from api.gateway import JobGateway
from api.prefect_reads import Run
from api.run_cache import FLOW_RUN_RESOURCE, RunCache
from api.run_index import RunIndex
from api.run_pages import read_by_id

logger = logging.getLogger("dspy_service.api")

# An async context manager yielding an async iterator of events (Prefect's subscriber).
Subscribe = Callable[[], AbstractAsyncContextManager[AsyncIterator[Any]]]
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 10.0


def prefect_subscriber() -> AbstractAsyncContextManager[AsyncIterator[Any]]:
    """Prefect's subscriber to the state-change events of every flow run."""
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    event_filter = EventFilter(
        event=EventNameFilter(prefix=[FLOW_RUN_RESOURCE]),
        resource=EventResourceFilter(id_prefix=[FLOW_RUN_RESOURCE]),
    )
    # We reconnect with our own backoff; while Prefect's client retried, the read model
    # would believe itself current.
    return get_events_subscriber(filter=event_filter, reconnection_attempts=0)


class RunReadModel:
    def __init__(
        self,
        gateway: JobGateway,
        cache: RunCache,
        subscribe: Subscribe = prefect_subscriber,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        index: RunIndex | None = None,
    ) -> None:
        self.gateway = gateway
        self.cache = cache
        self.index = index
        self._subscribe = subscribe
        self._sleep = sleep
        self.connections = 0
        self._failing = False

    async def get(self, job_id: str) -> Run | None:
        """A job's run (None: no such job), at most cache.max_age old."""
        try:
            run_id = str(UUID(job_id))
        except ValueError:
            return None
        run = self.cache.fresh(run_id)
        if run is not None:
            return run
        token = self.cache.token()
        run = await self.gateway.get(run_id)
        if run is not None:
            self.cache.store(run_id, run, token)
        return run

    async def reconcile_once(self) -> int:
        """Re-read the entries due (one request); how many were asked for."""
        if not self.cache.live:
            return 0
        due = self.cache.due_for_reconcile()
        if not due:
            return 0
        token = self.cache.token()
        self.cache.reconciled(due, await read_by_id(self.gateway, due), token)
        return len(due)

    async def reconcile_forever(self) -> None:
        while True:
            await self._sleep(self.cache.max_age / 3)
            try:
                await self.reconcile_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Prefect unreachable: entries age out into read-throughs
                logger.warning("read model: reconcile failed (%s: %s)", type(exc).__name__, exc)

    async def listen_forever(self) -> None:
        delay = BACKOFF_FIRST_SECONDS
        while True:
            try:
                async with self._subscribe() as events:
                    self._connected()
                    self.connections += 1
                    if self._failing:
                        logger.info("read model: event stream back; serving job reads from it again")
                    self._failing = False
                    delay = BACKOFF_FIRST_SECONDS
                    async for event in events:
                        self._on_event(event)
                self._disconnected()  # a clean close: reconnect
            except asyncio.CancelledError:
                self._disconnected()
                raise
            except Exception as exc:  # any stream error: read through until it is back
                self._disconnected()
                if not self._failing:
                    logger.warning(
                        "read model: event stream unavailable (%s: %s); job reads go to Prefect, retrying",
                        type(exc).__name__, exc,
                    )
                self._failing = True
            await self._sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_SECONDS)

    def _connected(self) -> None:
        self.cache.connected()
        if self.index is not None:
            self.index.connected()

    def _disconnected(self) -> None:
        self.cache.disconnected()
        if self.index is not None:
            self.index.disconnected()

    def _on_event(self, event: Any) -> None:
        run_id = self.cache.on_event(event.resource.id)
        if run_id is not None and self.index is not None:
            self.index.on_event(run_id, event.event)

    async def run_forever(self) -> None:
        """Both loops, until cancelled (off when the read model's size is 0)."""
        if not self.cache.enabled:
            return
        await asyncio.gather(self.listen_forever(), self.reconcile_forever())
