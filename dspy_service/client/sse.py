"""Server-Sent Events as the client reads them from GET /jobs/{id}/events.

`EventParser` is pure: it takes the stream's lines and returns complete events (the
`event:`/`id:`/`data:` fields of the SSE format; comments such as the server's keepalives
are dropped). `follow_events` / `afollow_events` read a job's stream to its end and
reconnect after a dropped connection with `Last-Event-ID`, so the caller sees every event
once. How they fail: an API refusal (404, 401, 400 for a bad id) raises at once; a
connection that keeps dropping raises `ServiceUnavailable` after `max_failures` tries in a
row without a single event.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from dspy_service.client.connection import AsyncConnection, Connection
from dspy_service.client.errors import ServiceUnavailable

FINAL_EVENTS = frozenset({"result", "error"})
RECONNECT_DELAY = 1.0
MAX_FAILURES = 30


@dataclass(frozen=True)
class Event:
    """One event: `type` (status, progress, log, usage, result, error), its JSON `data`,
    and `id`, the cursor a reconnect resumes after (None for usage snapshots)."""

    type: str
    data: Any
    id: str | None = None

    @property
    def final(self) -> bool:
        return self.type in FINAL_EVENTS


class EventParser:
    """Lines of an SSE stream in, complete events out."""

    def __init__(self) -> None:
        self._type = "message"
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> Event | None:
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> Event | None:
        if not self._data:
            self._type, self._id = "message", None
            return None
        text = "\n".join(self._data)
        try:
            data: Any = json.loads(text)
        except ValueError:
            data = text
        event = Event(self._type, data, self._id)
        self._type, self._data, self._id = "message", [], None
        return event


class Resumption:
    """Where a job's stream is across reconnects: the last id seen and the connections in a
    row that failed (dropped, or closed before a single event). Shared by the sync and the
    async follower, which differ only in how they read lines and wait."""

    def __init__(self, job_id: str, last_event_id: str | None, max_failures: int):
        self.path = f"/jobs/{job_id}/events"
        self.job_id = job_id
        self.last_id = last_event_id
        self.max_failures = max_failures
        self.failures = 0
        self._parser = EventParser()
        self._received = False

    def headers(self) -> dict[str, str]:
        """The next connection's headers; it starts a fresh parse."""
        self._parser, self._received = EventParser(), False
        return {"Last-Event-ID": self.last_id} if self.last_id else {}

    def take(self, line: str) -> Event | None:
        event = self._parser.feed(line)
        if event is not None:
            self.failures, self._received = 0, True
            if event.id:
                self.last_id = event.id
        return event

    def dropped(self, exc: Exception) -> None:
        self.failures += 1
        if self.failures >= self.max_failures:
            raise ServiceUnavailable(None, f"the event stream of job {self.job_id} keeps dropping: {exc}") from exc

    def closed(self) -> None:
        """The server closed the stream before its final event: reconnect (counted if empty)."""
        self.failures += 0 if self._received else 1
        if self.failures >= self.max_failures:
            raise ServiceUnavailable(None, f"the event stream of job {self.job_id} ends without events")


STREAM_ERRORS = (httpx.TransportError, httpx.RemoteProtocolError, ServiceUnavailable)


def follow_events(
    connection: Connection, job_id: str, last_event_id: str | None = None, max_failures: int = MAX_FAILURES
) -> Iterator[Event]:
    """Every event of the job after `last_event_id`, to the final one, across reconnects."""
    where = Resumption(job_id, last_event_id, max_failures)
    while True:
        try:
            with connection.stream(where.path, headers=where.headers()) as response:
                for line in response.iter_lines():
                    event = where.take(line)
                    if event is not None:
                        yield event
                        if event.final:
                            return
        except STREAM_ERRORS as exc:
            where.dropped(exc)
        else:
            where.closed()
        time.sleep(RECONNECT_DELAY)


async def afollow_events(
    connection: AsyncConnection, job_id: str, last_event_id: str | None = None, max_failures: int = MAX_FAILURES
) -> AsyncIterator[Event]:
    """The async twin of `follow_events`."""
    where = Resumption(job_id, last_event_id, max_failures)
    while True:
        try:
            async with connection.stream(where.path, headers=where.headers()) as response:
                async for line in response.aiter_lines():
                    event = where.take(line)
                    if event is not None:
                        yield event
                        if event.final:
                            return
        except STREAM_ERRORS as exc:
            where.dropped(exc)
        else:
            where.closed()
        await asyncio.sleep(RECONNECT_DELAY)
