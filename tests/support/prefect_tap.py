"""A TCP proxy in front of a Prefect server that counts its HTTP requests (method + path)
and can refuse the event stream (`/api/events/out`) or every flow-run label PATCH (as a
SQLite-backed server under write load answers it: 503), for `bench/count_calls.py` and the
worker tests.

Each client connection is forwarded byte for byte; requests are parsed from the client's
bytes only to be counted (keep-alive requests with Content-Length bodies; a chunked body
or a websocket upgrade ends the parsing of that connection, the bytes still flow). A
websocket is counted once, as its upgrade request. How it fails: a malformed request is
counted as `? ?` and forwarded unchanged.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter
from urllib.parse import urlsplit

LABEL_PATCH = re.compile(rb"^PATCH /api/flow_runs/[0-9a-f-]{36}/labels ")
ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def route_of(path: str) -> str:
    """`/api/flow_runs/<uuid>/set_state?x=1` -> `/api/flow_runs/{id}/set_state`."""
    return ID.sub("{id}", path.split("?", 1)[0])


class PrefectTap:
    """Listen on 127.0.0.1:<port> (0: any free port), forward to `upstream` (http://host:port)."""

    def __init__(self, upstream: str, refuse_events_out: bool = False, refuse_label_patches: bool = False) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.refuse_events_out = refuse_events_out
        self.refuse_label_patches = refuse_label_patches
        self.requests: list[tuple[str, str]] = []  # (method, route), in arrival order
        self.refused = 0
        self.refused_label_patches = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> PrefectTap:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def counts(self) -> Counter:
        return Counter(f"{method} {route}" for method, route in list(self.requests))

    def reset(self) -> None:
        self.requests.clear()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        if self.refuse_events_out and b" /api/events/out" in head.split(b"\r\n", 1)[0]:
            self.refused += 1
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        forward = self._requests_to_upstream if self.refuse_label_patches else self._client_to_upstream
        await asyncio.gather(
            forward(head, reader, up_writer, writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _requests_to_upstream(self, head: bytes, reader, writer, client) -> None:
        """Forward request by request, answering a label PATCH with 503 and closing the
        connection (the client sends its next request only after the previous response)."""
        counter = RequestCounter(self.requests)
        try:
            while True:
                parsed = parse_head(head.decode("latin-1").removesuffix("\r\n\r\n"))
                if parsed is None or not length_framed(parsed[2]):
                    return await self._client_to_upstream(head, reader, writer, client)
                request = head + await reader.readexactly(int(parsed[2].get("content-length") or 0))
                counter.feed(request)
                if LABEL_PATCH.match(request):
                    self.refused_label_patches += 1
                    client.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    await client.drain()
                    client.close()
                    return
                writer.write(request)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return
        finally:
            writer.close()

    async def _client_to_upstream(self, head: bytes, reader, writer, client=None) -> None:
        counter = RequestCounter(self.requests)
        data = head
        try:
            while data:
                counter.feed(data)
                writer.write(data)
                await writer.drain()
                data = await reader.read(65536)
        finally:
            writer.close()

    @staticmethod
    async def _pipe(reader, writer) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


class RequestCounter:
    """Parses the requests of one client connection from its bytes, appending (method, route)."""

    def __init__(self, sink: list[tuple[str, str]]) -> None:
        self.sink = sink
        self.buffer = b""
        self.body_left = 0
        self.active = True

    def feed(self, data: bytes) -> None:
        if not self.active:
            return
        self.buffer += data
        while self.active:
            if self.body_left:
                taken = min(self.body_left, len(self.buffer))
                self.buffer, self.body_left = self.buffer[taken:], self.body_left - taken
                if self.body_left:
                    return
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buffer = self.buffer[:end].decode("latin-1"), self.buffer[end + 4 :]
            self._request(head)

    def _request(self, head: str) -> None:
        parsed = parse_head(head)
        if parsed is None:
            self.sink.append(("?", "?"))
            self.active = False
            return
        method, path, headers = parsed
        self.sink.append((method, route_of(path)))
        if not length_framed(headers):
            self.active = False  # a websocket or a chunked body: the rest is not parsed
            return
        self.body_left = int(headers.get("content-length") or 0)


def parse_head(head: str) -> tuple[str, str, dict[str, str]] | None:
    """(method, path, headers by lower-case name) of an HTTP request head without its blank
    line, or None when its first line is not a request line."""
    lines = head.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) < 3:
        return None
    pairs = (line.partition(":") for line in lines[1:])
    return parts[0], parts[1], {name.strip().lower(): value.strip() for name, _, value in pairs}


def length_framed(headers: dict[str, str]) -> bool:
    """Whether the request's body ends after Content-Length bytes (not a websocket upgrade
    or a chunked body, whose bytes are only passed on)."""
    return "upgrade" not in headers and "transfer-encoding" not in headers
