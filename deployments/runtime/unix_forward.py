"""A TCP port on loopback that forwards every connection to a Unix socket (stdlib only).

Inside the sandbox the network namespace has only loopback, and the job-scoped proxies
run outside it on Unix sockets bound into the sandbox. Clients that only speak TCP (the
Prefect client's `PREFECT_API_URL`, `HTTP_PROXY`) connect to this forwarder's port, which
relays the bytes both ways; it understands nothing of what it relays (the proxy behind
the socket enforces everything). Tests use it to put a TCP URL in front of a proxy.

`start()` returns once the port listens (the asyncio loop runs in a daemon thread) and
raises OSError if it cannot listen; `close()` stops listening and drops open connections.
A connection whose Unix socket cannot be reached is closed at once.

`socket_address` is how both ends name a socket whose path is longer than AF_UNIX allows
(107 bytes; job directories can be deeper): through an open descriptor of its directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from pathlib import Path

CHUNK = 64 * 1024
MAX_SOCKET_PATH = 100  # AF_UNIX allows 107 bytes; longer paths go through /proc/self/fd


def socket_address(path: Path | str) -> tuple[str, int | None]:
    """(an address for bind/connect naming `path`, the directory descriptor it needs open
    meanwhile, or None). Raises OSError if the directory cannot be opened."""
    path = Path(path)
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return str(path), None
    directory = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    return f"/proc/self/fd/{directory}/{path.name}", directory


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then pass the EOF on (half-close); an error closes `writer`."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


class TcpToUnixForwarder:
    """`host:port` (port 0: any free port, see `port` after `start`) -> `socket_path`."""

    def __init__(self, socket_path: Path | str, host: str = "127.0.0.1", port: int = 0):
        self.socket_path = str(socket_path)
        self._address, self._directory = socket_address(socket_path)
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._connections: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> int:
        """Listen; the port."""
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True, name="tcp-to-unix")
        self._thread.start()
        if not self._ready.wait(timeout):
            raise OSError(f"the forwarder to {self.socket_path} did not start listening within {timeout:g} s")
        if self._error is not None:
            raise OSError(f"the forwarder cannot listen on {self.host}:{self.port}: {self._error}")
        return self.port

    def close(self, timeout: float = 5.0) -> None:
        if self._loop is not None and self._stopped is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(timeout)
        if self._directory is not None:
            os.close(self._directory)
            self._directory = None

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        try:
            server = await asyncio.start_server(self._accept, self.host, self.port)
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stopped.wait()
            server.close()
            for task in list(self._connections):
                task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            try:
                upstream_reader, upstream_writer = await asyncio.open_unix_connection(self._address)
            except OSError:
                return
            try:
                await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
            except asyncio.CancelledError:  # close(): drop the connection quietly
                pass
            finally:
                upstream_writer.close()
        finally:
            writer.close()
            self._connections.discard(task)
