"""GET /jobs/{id}/events: a job's events as Server-Sent Events (text/event-stream).

Wire format (README "Event stream"): `retry: 2000` first; then per event `id: <cursor>`,
`event: <type>`, `data: <one-line JSON>` and a blank line. Types: `status` (one per state
of the run's state history), `progress` (the objects of GET /jobs/{id} `progress_events`),
`log` (the entries of GET /jobs/{id}/logs), `usage` (the summary's `usage`, sent on
connect when known and whenever it changes; a snapshot, so it has no `id:`), and last
`result` (success) or `error` (failed, cancelled), whose data is GET /jobs/{id}/summary;
then the server closes the stream. `: keepalive` comments keep an idle connection open
(DSPY_SERVICE_EVENTS_HEARTBEAT_SECONDS).

Nothing is kept in an API process between requests: every POLL_SECONDS the stream reads
the run, its state history (only when the run's state changed since the last read) and
its logs from a bounded window, and sends what api/event_cursor.py says is due. The
order, the settle rule that makes resuming exact and the ids are defined there; a stream
resumed on another replica or after a restart continues where the cursor points.

How it fails: a malformed Last-Event-ID is refused before the stream starts (400, the
route); a deleted job ends the stream without a final event; when Prefect cannot be read
the stream keeps polling and, after GIVE_UP_SECONDS of failures, closes (the client
resumes with its last id); a client that goes away ends the generator at the next poll.
Events carry what GET /jobs/{id} and /logs already show, nothing more.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from uuid import UUID

import httpx
import orjson
from fastapi import Request

from api import views
from api.event_cursor import (
    LOG_LOOKBACK_SECONDS,
    Item,
    Position,
    compile_item,
    cutoff_us,
    due,
    final_event_type,
    final_item,
    from_micros,
    log_item,
    micros,
    shipped_late,
    state_item,
)
from api.gateway import JobGateway
from api.prefect_reads import Run
from dspy_service import contract

logger = logging.getLogger("dspy_service.api")

POLL_SECONDS = 1.0
RETRY_MS = 2000
GIVE_UP_SECONDS = 30.0
KEEPALIVE = ": keepalive\n\n"
_UNSENT = object()


def sse(event_type: str, data: Any, event_id: str | None = None) -> str:
    """One event on the wire (JSON escapes every line break, so `data` is one line)."""
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event_type}\ndata: {orjson.dumps(data).decode()}\n\n"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class EventFollower:
    """The events of one run after `after`, one poll at a time. It remembers, for this
    connection only, the history it read, how far logs are settled and the usage it sent;
    a new connection rebuilds all of it from Prefect and the cursor."""

    def __init__(
        self, gateway: JobGateway, run: Run, after: Position, clock: Callable[[], dt.datetime] = utc_now
    ) -> None:
        self.gateway = gateway
        self.run_id = str(run["id"])
        self.after = after
        self.clock = clock
        self.states: list[dict[str, Any]] = []
        self.settled_us = after.time_us  # every log received before this was sent (or is not streamed)
        self.usage: Any = _UNSENT
        self.compile_task: dict[str, Any] | None = None  # once found, it never changes
        self.compile_looked_after_end = False

    async def poll(self) -> tuple[list[str], bool]:
        """(the events to send now, formatted; whether the stream is over)."""
        now = self.clock()  # before the reads: a row stamped before now - settle is visible to them
        run = await self.gateway.get(self.run_id)
        if run is None:
            return [], True
        state = run.get("state") or {}
        if not self.states or self.states[-1].get("id") != state.get("id"):
            self.states = await self.gateway.states(UUID(self.run_id))
        lookback_us = int(LOG_LOOKBACK_SECONDS * 1_000_000)
        since = from_micros(self.settled_us - lookback_us) if self.settled_us > lookback_us else None
        logs = await self.gateway.logs_since(UUID(self.run_id), since)
        compile_us = await self._compile_started_us(state)
        items = [state_item(s, compile_us) for s in self.states]
        if self.compile_task is not None:
            items.append(compile_item(self.compile_task))
        items += [log_item(log) for log in logs if not shipped_late(log)]
        final = final_item(state)
        if final is not None:
            items.append(final)
        cutoff = cutoff_us(now)
        sent = due(items, self.after, cutoff)
        self.settled_us = max(self.settled_us, cutoff)
        chunks = [sse(item.type, item.data, item.id) for item in sent if item.type != "final"]
        usage = contract.decode_json_label(run.get("labels") or {}, contract.USAGE, None)
        if usage is not None and usage != self.usage:
            chunks.append(sse("usage", usage))
            self.usage = usage
        if sent:
            self.after = sent[-1].position
        if sent and sent[-1].type == "final":
            chunks.append(await self.final_event(run, sent[-1]))
            return chunks, True
        return chunks, False

    async def _compile_started_us(self, state: dict[str, Any]) -> int | None:
        """When the compile task run was created: read while the run runs (until found) and
        once after it ended; a run that never got there has none."""
        if self.compile_task is None and state.get("type") != "SCHEDULED" and state.get("type") != "PENDING":
            ended = state.get("type") in contract.TERMINAL_STATE_TYPES
            if not (ended and self.compile_looked_after_end):
                self.compile_task = await self.gateway.compile_task(UUID(self.run_id))
                self.compile_looked_after_end = ended
        return micros(self.compile_task["created"]) if self.compile_task is not None else None

    async def final_event(self, run: Run, item: Item) -> str:
        outcome = await self.gateway.outcome(run)
        summary = views.summary(run, outcome.status, outcome.message)
        return sse(final_event_type(outcome.status), summary, item.id)


async def event_stream(
    request: Request, follower: EventFollower, heartbeat_seconds: float, poll_seconds: float = POLL_SECONDS
) -> AsyncIterator[str]:
    """The response body: poll, send, sleep, until the final event, the job's deletion,
    the client's departure or GIVE_UP_SECONDS of failing reads."""
    yield f"retry: {RETRY_MS}\n\n"
    failing_since: float | None = None
    last_write = time.monotonic()
    while not await request.is_disconnected():
        try:
            chunks, over = await follower.poll()
            failing_since = None
        except httpx.HTTPError as exc:
            failing_since = failing_since or time.monotonic()
            logger.warning("event stream of job %s: Prefect read failed (%s)", follower.run_id, type(exc).__name__)
            if time.monotonic() - failing_since >= GIVE_UP_SECONDS:
                return
            chunks, over = [], False
        for chunk in chunks:
            yield chunk
            last_write = time.monotonic()
        if over:
            return
        if time.monotonic() - last_write >= heartbeat_seconds:
            yield KEEPALIVE
            last_write = time.monotonic()
        await asyncio.sleep(poll_seconds)
