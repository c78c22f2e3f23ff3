"""The relay <-> zygote protocol of warm start (stdlib only: the relay imports it).

One Unix stream connection per job, opened by the relay (deployments/runtime/relay.py):

1. relay -> zygote: an 8-byte big-endian length carrying the relay's stdin, stdout and
   stderr as SCM_RIGHTS file descriptors, then that many bytes of JSON
   `{"env": {...}, "cwd": "...", "argv": [...], "relay_pid": N}`;
2. zygote -> relay: `pid <supervisor pid>\\n` once it has forked the job's supervisor
   (or `error <text>\\n` if it could not);
3. zygote -> relay: `exit <code>\\n` when it has reaped that supervisor.

The relay then exits with that code. The connection stays open for the whole job: the
supervisor (a child of the zygote holding the zygote's end) sees the relay gone, i.e. the
worker gone, as EOF on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
from pathlib import Path

SOCKET_ENV = "DSPY_SERVICE_ZYGOTE_SOCKET"
HEADER = struct.Struct(">Q")
MAX_REQUEST = 16 * 1024 * 1024
# sun_path holds 108 bytes on Linux, the terminating NUL included.
MAX_SOCKET_PATH = 100


def socket_path(home: Path, name: str) -> str:
    """Where the zygote of worker `name` listens: under the service home, or in /tmp
    when that path would be too long for a Unix socket."""
    path = str(Path(home).expanduser() / f"zygote-{name}.sock")
    if len(path.encode()) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(path.encode()).hexdigest()[:16]
    return f"/tmp/dspy-service-zygote-{digest}.sock"


def send_request(sock: socket.socket, request: dict, fds: list[int]) -> None:
    payload = json.dumps(request).encode()
    socket.send_fds(sock, [HEADER.pack(len(payload))], fds)
    sock.sendall(payload)


def recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed in the middle of a message")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def recv_request(sock: socket.socket, max_fds: int = 3) -> tuple[dict, list[int]]:
    head, fds, _flags, _addr = socket.recv_fds(sock, HEADER.size, max_fds)
    if not head and not fds:
        raise EOFError("the client closed the connection (a readiness probe)")
    try:
        if len(head) < HEADER.size:
            head += recv_exact(sock, HEADER.size - len(head))
        (size,) = HEADER.unpack(head)
        if size > MAX_REQUEST:
            raise ValueError(f"request of {size} bytes is too large")
        request = json.loads(recv_exact(sock, size))
        if not isinstance(request, dict) or len(fds) != max_fds:
            raise ValueError("malformed request")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return request, fds


class LineReader:
    """`pid N` / `exit N` lines from a (possibly non-blocking) socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""
        self.eof = False

    def feed(self) -> None:
        """Read what is there (call when the socket is readable)."""
        try:
            data = self.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self.buffer += data
        else:
            self.eof = True

    def line(self) -> str | None:
        if b"\n" not in self.buffer:
            return None
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode("utf-8", "replace")


def exit_code(status: int) -> int:
    """A waitpid status as a shell would report it (signals as 128 + number)."""
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return 1
