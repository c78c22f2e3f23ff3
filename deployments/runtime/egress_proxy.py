"""The job's only way to the network: an HTTP forward proxy on a Unix socket, run by the
job's supervisor (outside the sandbox) for the engine inside it.

The engine's HTTP clients reach it through HTTP_PROXY / HTTPS_PROXY / ALL_PROXY (a TCP
forwarder inside the sandbox, deployments/runtime/forwarder.py, passes 127.0.0.1:3128 on
to the socket). It serves two kinds of request:

- `CONNECT host:port` (https and any other TLS): a byte tunnel once allowed;
- absolute-URI plain http (`GET http://host:port/path HTTP/1.1`): forwarded in origin
  form with `Connection: close` (one request per connection; no keep-alive).

A target is allowed when it is one of the job's hosts (`JobHosts.target_problem`) and
every address its name resolves to passes the policy (`EgressPolicy.addresses_problem`,
dspy_service/egress_policy.py). The proxy resolves names itself and connects to the
addresses it checked: a name cannot resolve to something else between check and connect.

Failures, as the client sees them: a denied target gets `403 Egress denied: <reason>`
(the reason is in the status line, which is what HTTP clients report for a refused
CONNECT, and in the body) and is reported once per distinct target through `on_denied`;
a malformed request gets 400, a request head over 64 KiB 431; more than `max_connections`
at once get 503; an allowed target that cannot be reached gets 502, or 504 after
`connect_timeout`; a client that sends no complete head within 30 s is disconnected.
`start()` raises OSError when the socket cannot be bound (a path over ~100 bytes is too
long for a Unix socket); `close()` never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from deployments.runtime.forwarder import CHUNK, LoopThread, close_writer, copy_stream, pipe
from dspy_service.egress_policy import EgressPolicy, JobHosts, normal_host, parse_address

MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 10.0
RESOLVE_TIMEOUT_SECONDS = 10.0
MAX_CONNECTIONS = 128
MAX_REASON_CHARS = 300
# Headers for one hop only (RFC 9110 7.6.1), never passed on to the target.
HOP_BY_HOP = {
    "connection", "proxy-connection", "keep-alive", "proxy-authorization", "proxy-authenticate", "te",
    "trailer", "upgrade",
}


class Refusal(Exception):
    """An answer to the client instead of a connection: status, reason phrase, body."""

    def __init__(self, status: int, reason: str, detail: str = ""):
        super().__init__(reason)
        self.status, self.reason, self.detail = status, reason, detail or reason


class Denied(Refusal):
    """The policy refused the target (403): reported through `on_denied`."""

    def __init__(self, request: str, target: str, reason: str):
        super().__init__(403, f"Egress denied: {reason}", f"denied by the job's egress policy: {reason}")
        self.request, self.target, self.why = request, target, reason


class RequestHead:
    """The request line and headers of what a client asked the proxy for."""

    def __init__(self, raw: bytes):
        try:
            lines = raw.decode("latin-1").split("\r\n")
            self.method, self.target, self.version = lines[0].split(" ")
        except ValueError:
            raise Refusal(400, "Bad Request", "not an HTTP request line") from None
        self.headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:] if ":" in line]

    def destination(self) -> tuple[str, int]:
        """(host, port) the client wants to reach; Refusal(400) when the request names none."""
        if self.method.upper() == "CONNECT":
            host, _, port = self.target.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise Refusal(400, "Bad Request", f"CONNECT needs host:port, not {self.target!r}")
            return normal_host(host), int(port)
        parts = urlsplit(self.target)
        if parts.scheme.lower() != "http" or not parts.hostname:
            raise Refusal(400, "Bad Request", "send http:// URLs in absolute form, and https through CONNECT")
        try:
            port = parts.port or 80
        except ValueError:
            raise Refusal(400, "Bad Request", f"bad port in {self.target!r}") from None
        return normal_host(parts.hostname), port

    def origin_form(self) -> bytes:
        """The request as the target's server expects it: path only, no hop-by-hop headers,
        one request, and the Host of the checked URL (RFC 9112 3.2.2: a proxy replaces the
        client's, which could name another site behind the same address)."""
        parts = urlsplit(self.target)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        named = {
            token.strip().lower()
            for name, value in self.headers
            if name.lower() == "connection"
            for token in value.split(",")
        }
        dropped = HOP_BY_HOP | named | {"host"}
        kept = [f"{n}: {v}" for n, v in self.headers if n.lower() not in dropped]
        host = parts.netloc.rpartition("@")[2]
        lines = [f"{self.method} {path} {self.version}", f"Host: {host}", *kept, "Connection: close", "", ""]
        return "\r\n".join(lines).encode("latin-1")


def response(status: int, reason: str, body: str = "") -> bytes:
    reason = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in reason)[:MAX_REASON_CHARS]
    payload = (body + "\n").encode() if body else b""
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(payload)}\r\n"
    return (head + "Connection: close\r\n\r\n").encode("latin-1") + payload


def without_keep_alive(head: bytes) -> bytes:
    """A response head from the target with `Connection: close` (the proxy serves one request)."""
    lines = head.decode("latin-1").split("\r\n")
    kept = [line for line in lines[1:] if line and line.split(":", 1)[0].strip().lower() not in HOP_BY_HOP]
    return "\r\n".join([lines[0], *kept, "Connection: close", "", ""]).encode("latin-1")


class EgressProxy:
    """A job's egress proxy on the Unix socket `socket_path` (see the module docstring).

    `on_denied(message)` is called once per distinct denied target, from the proxy's
    thread, e.g. with "sandbox: denied CONNECT 169.254.169.254:443 (... always denied)";
    exceptions it raises are ignored. The socket file gets mode `socket_mode` (default:
    anyone who can reach the directory may connect; keep the directory private)."""

    def __init__(
        self,
        socket_path: Path,
        policy: EgressPolicy,
        job_hosts: JobHosts,
        on_denied: Callable[[str], None],
        *,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        resolve_timeout: float = RESOLVE_TIMEOUT_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
        socket_mode: int = 0o666,
    ):
        self.socket_path = Path(socket_path)
        self.policy, self.job_hosts, self.on_denied = policy, job_hosts, on_denied
        self.connect_timeout, self.resolve_timeout = connect_timeout, resolve_timeout
        self.max_connections, self.socket_mode = max_connections, socket_mode
        self.active = 0  # connections being served now
        # Python 3.11's streams keep a connection's reader only weakly and its handler task
        # not at all: without this set an idle tunnel's task can be garbage-collected.
        self._tasks: set[asyncio.Task] = set()
        self.allowed: Counter[str] = Counter()  # "host:port" -> connections opened to it
        self.reported: set[str] = set()
        self._thread = LoopThread(f"egress-proxy-{self.socket_path.name}", self._serve)

    def start(self) -> EgressProxy:
        """Listen on the socket (a stale file there is replaced); returns once listening."""
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop listening, drop open connections, remove the socket file."""
        self._thread.close()
        with contextlib.suppress(OSError):
            self.socket_path.unlink()

    async def _serve(self) -> asyncio.AbstractServer:
        server = await asyncio.start_unix_server(self._handle, path=str(self.socket_path), limit=MAX_HEAD_BYTES)
        os.chmod(self.socket_path, self.socket_mode)
        return server

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.active >= self.max_connections:
            writer.write(response(503, "Service Unavailable", f"more than {self.max_connections} connections at once"))
            await close_writer(writer)
            return
        self.active += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._serve_one(reader, writer)
        except Refusal as refusal:
            if isinstance(refusal, Denied):
                self._report(refusal)
            with contextlib.suppress(ConnectionError, OSError):
                writer.write(response(refusal.status, refusal.reason, refusal.detail))
                await writer.drain()
        except (TimeoutError, ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.active -= 1
            self._tasks.discard(task)
            await close_writer(writer)

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_SECONDS)
        except asyncio.LimitOverrunError:
            raise Refusal(431, "Request Header Fields Too Large", f"request head over {MAX_HEAD_BYTES} bytes") from None
        head = RequestHead(raw[:-4])
        host, port = head.destination()
        if head.method.upper() == "CONNECT":
            upstream = await self._open("CONNECT", host, port)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await pipe((reader, writer), upstream)
            return
        upstream_reader, upstream_writer = await self._open(head.method, host, port)
        try:
            upstream_writer.write(head.origin_form())
            answer = asyncio.ensure_future(self._relay_response(upstream_reader, writer))
            body = asyncio.ensure_future(copy_stream(reader, upstream_writer))  # the request body, if any
            await asyncio.wait({answer, body}, return_when=asyncio.FIRST_COMPLETED)
            if not answer.done() and body.exception() is None:
                await answer  # the client sent its request and half-closed: the answer follows
            body.cancel()
            answer.cancel()
        finally:
            await close_writer(upstream_writer)

    async def _relay_response(self, upstream: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The target's response to the client, its head saying `Connection: close`."""
        try:
            try:
                head = await upstream.readuntil(b"\r\n\r\n")
                writer.write(without_keep_alive(head[:-4]))
            except asyncio.LimitOverrunError:
                writer.write(await upstream.read(MAX_HEAD_BYTES))
            except asyncio.IncompleteReadError as partial:
                writer.write(partial.partial)
            while chunk := await upstream.read(CHUNK):
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            await close_writer(writer)

    async def _open(self, method: str, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to an allowed target, at an address this proxy resolved and checked."""
        addresses: list[str] = []
        problem = self.job_hosts.target_problem(host, port)
        if problem is None:
            addresses = await self._resolve(host, port)
            problem = self.policy.addresses_problem(host, port, addresses)
        if problem:
            raise Denied(f"{method} {host}:{port}", f"{host}:{port}", problem)
        last: Exception | None = None
        for address in addresses:
            try:
                connection = await asyncio.wait_for(
                    asyncio.open_connection(address, port, limit=MAX_HEAD_BYTES), self.connect_timeout
                )
            except (TimeoutError, OSError) as exc:
                last = exc
                continue
            self.allowed[f"{host}:{port}"] += 1
            return connection
        if isinstance(last, TimeoutError):
            raise Refusal(504, "Gateway Timeout", f"{host}:{port} did not answer within {self.connect_timeout:g} s")
        raise Refusal(502, "Bad Gateway", f"cannot connect to {host}:{port}: {last}")

    async def _resolve(self, host: str, port: int) -> list[str]:
        """The addresses of `host` (a literal address is its own); [] when it does not resolve in time."""
        literal = parse_address(host)
        if literal is not None:
            return [str(literal)]
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), self.resolve_timeout
            )
        except (TimeoutError, OSError, UnicodeError):
            return []
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    def _report(self, denied: Denied) -> None:
        if denied.target in self.reported:
            return
        self.reported.add(denied.target)
        with contextlib.suppress(Exception):
            self.on_denied(f"sandbox: denied {denied.request} ({denied.why})")

