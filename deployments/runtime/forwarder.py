"""Plumbing of the egress proxy (stdlib only): an asyncio loop in a daemon thread, a byte
pipe between two streams, and the environment that sends a process's HTTP clients through
a proxy. (The sandbox's TCP -> Unix socket bridge is unix_forward.py.)

Failures: `LoopThread.start()` raises what the server's start raised (RuntimeError when the
loop thread does not come up); `close()` never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable

CHUNK = 64 * 1024
START_TIMEOUT_SECONDS = 10.0
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def proxy_environment(proxy_url: str, no_proxy: str) -> dict[str, str]:
    """The environment that sends a process's HTTP clients (httpx, DSPy's transport,
    LiteLLM's httpx and aiohttp transports, urllib) through the proxy at `proxy_url`,
    except to the `no_proxy` targets (comma-separated; e.g. "127.0.0.1:4200,http://127.0.0.1:4200"
    for the Prefect API). Upper and lower case: clients differ in which they read."""
    env = {}
    for name in (*PROXY_VARIABLES, "NO_PROXY"):
        value = no_proxy if name == "NO_PROXY" else proxy_url
        env[name] = env[name.lower()] = value
    return env


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


async def copy_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then pass the EOF on (a half-close: the other direction goes on)."""
    while chunk := await reader.read(CHUNK):
        writer.write(chunk)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


async def pipe(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter], b: tuple[asyncio.StreamReader, asyncio.StreamWriter]
) -> None:
    """Pass bytes both ways between two connections until both directions ended (or one
    failed); then close both."""
    directions = [asyncio.ensure_future(copy_stream(a[0], b[1])), asyncio.ensure_future(copy_stream(b[0], a[1]))]
    try:
        await asyncio.gather(*directions)
    except (ConnectionError, OSError):
        pass
    finally:
        for direction in directions:
            direction.cancel()
        await close_writer(a[1])
        await close_writer(b[1])


class LoopThread:
    """An asyncio loop in a daemon thread running one server: `start()` returns once the
    server listens, `close()` stops it and cancels its connections."""

    def __init__(self, name: str, serve: Callable[[], Awaitable[asyncio.AbstractServer]]):
        self.name = name
        self._serve = serve
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self.loop = loop
            try:
                self._server = loop.run_until_complete(self._serve())
            except BaseException as exc:  # noqa: BLE001 - handed to start()'s caller
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                self._shutdown(loop)

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT_SECONDS):
            raise RuntimeError(f"{self.name} did not start within {START_TIMEOUT_SECONDS:g} s")
        if failure:
            raise failure[0]

    def _shutdown(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()

    def close(self, timeout: float = 5.0) -> None:
        loop, thread = self.loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
