"""The job-scoped Prefect API proxy: how a sandboxed engine reaches Prefect, and all it reaches.

One per job, run by the trusted supervisor (which holds the Prefect credentials) on a
Unix socket that is bound into the job's sandbox; inside, a TCP forwarder
(unix_forward.py) gives the engine's Prefect client a `PREFECT_API_URL` without any auth
string. Every request is checked with the job's scope (prefect_scope.py) first:

- allowed HTTP requests are forwarded to the upstream API (HTTP/1.1 keep-alive towards
  the engine, one pooled httpx client upstream) with the sandbox's own auth headers
  dropped and the upstream's added; the ids of what they create (artifacts, task runs,
  leases) become the job's;
- the event websockets are relayed message by message: towards Prefect the proxy does
  the `prefect` subprotocol's auth handshake itself (the sandbox holds no token), drops
  and reports every event on `/api/events/in` that is not about this job, narrows the
  subscription on `/api/events/out` to this job's flow run and passes back only its events;
- `GET /api/dspy-service/champion-result` (the champion's run and result) and
  `POST /api/dspy-service/champion-registration` (register a promoted run as its
  schedule's `register_as` says) are answered here, on the trusted side
  (trusted_routes.py), because a sandbox can read no other job's result file and write
  neither Prefect Variables nor the shared storage;
- the engine's proposal of Running while its run is Cancelled or Cancelling is answered
  with Prefect's ABORT (cancelled_start.py).

Everything else gets 403 with `{"detail": "sandbox: <reason>"}`, and `on_denied` gets
`sandbox: denied <METHOD> <path> (<reason>)` once per distinct request, up to MAX_REPORTED (`close()` reports
how many more were denied). `on_denied` runs in a worker thread and may block; its
errors are logged and dropped.

How it fails: `start()` raises OSError when the socket cannot be bound and RuntimeError
when the server does not come up; an unreachable upstream is a 502 to the engine (whose
Prefect client retries it) and closes a websocket with 1011; `close()` never raises.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from websockets.asyncio.client import connect as websocket_connect

from deployments.runtime.cancelled_start import ABORTED, cancelled_before_start, proposes_running
from deployments.runtime.prefect_event_scope import event_decision, is_own_flow_run_event, own_events_filter
from deployments.runtime.prefect_scope import (
    Decision,
    JobObjects,
    JobScope,
    decide,
    split_path,
    strict_json,
)
from deployments.runtime.trusted_routes import champion_registration, champion_result
from deployments.runtime.unix_forward import socket_address
from dspy_service.contract import CHAMPION_REGISTRATION_ROUTE, CHAMPION_RESULT_ROUTE
from dspy_service.tls import default_ssl_context

logger = logging.getLogger("dspy_service.prefect_proxy")

MAX_REPORTED = 50  # distinct denials written to a job's log
MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
UPSTREAM_TIMEOUT = httpx.Timeout(120.0, connect=10.0)
# Never forwarded upstream: hop-by-hop headers, what httpx sets itself, and anything that
# could carry credentials of the sandbox's own (the upstream's are added instead).
DROPPED_REQUEST_HEADERS = {
    "host", "connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "expect",
    "content-length", "content-type", "content-encoding", "accept-encoding", "cookie", "proxy-connection",
}  # fmt: skip
DROPPED_RESPONSE_HEADERS = {
    "connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "set-cookie", "server",
    "date",
}  # fmt: skip


def carries_credentials(name: str) -> bool:
    return any(word in name for word in ("auth", "api-key", "apikey", "token", "cookie"))


def websocket_token(headers: Mapping[str, str]) -> str | None:
    """The token Prefect's websocket auth message carries: the auth string behind a Basic
    header, the key behind a Bearer header."""
    value = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
    scheme, _, credentials = value.partition(" ")
    if scheme.lower() == "basic":
        return base64.b64decode(credentials).decode()
    return credentials or None


def bind_unix_socket(path: Path, mode: int) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    address, directory = socket_address(path)
    try:
        sock.bind(address)
        os.chmod(path, mode)
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    finally:
        if directory is not None:
            os.close(directory)
    return sock


async def read_body(receive: Callable, limit: int) -> bytes | None:
    """The request body; None when it is larger than `limit`."""
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def respond(send: Callable, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class PrefectProxy:
    """The Prefect API as the engine of one job may use it (see the module docstring)."""

    def __init__(
        self,
        socket_path: Path,
        upstream_api_url: str,
        upstream_headers: Mapping[str, str],
        scope: JobScope,
        on_denied: Callable[[str], None],
        *,
        socket_mode: int = 0o600,
    ):
        self.socket_path = Path(socket_path)
        self.upstream_api_url = upstream_api_url.rstrip("/")
        self.upstream_headers = dict(upstream_headers)
        self.scope = scope
        self.on_denied = on_denied
        self.socket_mode = socket_mode
        self.objects = JobObjects()
        self._reported: set[str] = set()
        self._unreported = 0
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        """Listen on the socket; returns once requests are served."""
        sock = bind_unix_socket(self.socket_path, self.socket_mode)
        config = uvicorn.Config(
            self, lifespan="off", log_config=None, access_log=False, server_header=False, date_header=False,
            ws="websockets-sansio", ws_max_size=MAX_MESSAGE_BYTES, timeout_keep_alive=30, timeout_graceful_shutdown=2,
        )  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(sock),), daemon=True, name="proxy")
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the Prefect proxy on {self.socket_path} did not start")
            time.sleep(0.005)

    async def _serve(self, sock: socket.socket) -> None:
        self._client = httpx.AsyncClient(
            timeout=UPSTREAM_TIMEOUT, headers=self.upstream_headers, verify=default_ssl_context()
        )
        try:
            assert self._server is not None
            await self._server.serve(sockets=[sock])
        finally:
            sock.close()
            await self._client.aclose()

    def close(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        with contextlib.suppress(OSError):
            self.socket_path.unlink()
        if self._unreported:
            self._report(f"sandbox: {self._unreported} more requests were denied (not listed)")
            self._unreported = 0

    # -- denials ------------------------------------------------------------------------------
    def deny(self, message: str, reason: str) -> None:
        """Report `message` (a request and why it was denied) once; after MAX_REPORTED
        distinct ones, only count them (a hostile job must not flood its own log)."""
        with self._lock:
            if message in self._reported or len(self._reported) >= MAX_REPORTED:
                self._unreported += message not in self._reported
                return
            self._reported.add(message)
        asyncio.get_running_loop().run_in_executor(None, self._report, message)

    def _report(self, message: str) -> None:
        try:
            self.on_denied(message)
        except Exception:  # noqa: BLE001 - reporting must never break the proxy
            logger.exception("could not report a denial: %s", message)

    # -- ASGI ---------------------------------------------------------------------------------
    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self.websocket(scope, receive, send)

    async def http(self, scope: dict, receive: Callable, send: Callable) -> None:
        method = scope["method"]
        path = (scope.get("raw_path") or b"").decode("latin-1")
        query = scope.get("query_string", b"").decode("latin-1")
        body = await read_body(receive, MAX_BODY_BYTES)
        if body is None:
            decision = Decision(False, f"request bodies are limited to {MAX_BODY_BYTES // 2**20} MB")
        else:
            decision = decide(self.scope, method, path, query, body, self.objects)
        if not decision.allowed:
            self.deny(f"sandbox: denied {method} {path} ({decision.reason})", decision.reason)
            await respond(send, 403, {"detail": f"sandbox: {decision.reason}"})
            return
        if split_path(path) == CHAMPION_RESULT_ROUTE.strip("/").split("/"):
            assert self._client is not None and self.scope.schedule_id is not None
            await respond(send, *await champion_result(self._client, self.upstream_url, self.scope.schedule_id))
            return
        if split_path(path) == CHAMPION_REGISTRATION_ROUTE.strip("/").split("/"):
            registered = await champion_registration(
                self.upstream_api_url, self.upstream_headers, self.scope.flow_run_id, body
            )
            await respond(send, *registered)
            return
        if proposes_running(self.scope.flow_run_id, method, path, body) and await cancelled_before_start(
            self._client, self.upstream_url(f"/api/flow_runs/{self.scope.flow_run_id}")
        ):
            await respond(send, 200, ABORTED)  # see cancelled_start.py
            return
        try:
            response = await self.forward(method, path, query, scope["headers"], body)
        except httpx.TransportError as exc:
            await respond(send, 502, {"detail": f"sandbox: the Prefect API cannot be reached ({type(exc).__name__})"})
            return
        self.objects.remember(method, path, response.status_code, response.content, body)
        headers = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in response.headers.multi_items()
            if k.lower() not in DROPPED_RESPONSE_HEADERS
        ]
        headers.append((b"content-length", str(len(response.content)).encode()))
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": response.content})

    def upstream_url(self, path: str, query: str = "") -> str:
        return self.upstream_api_url + path.removeprefix("/api") + (f"?{query}" if query else "")

    async def forward(
        self, method: str, path: str, query: str, headers: list[tuple[bytes, bytes]], body: bytes | None
    ) -> httpx.Response:
        assert self._client is not None
        forwarded = {
            name: value
            for name, value in ((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in headers)
            if name not in DROPPED_REQUEST_HEADERS and not carries_credentials(name)
        }
        if body:
            forwarded["content-type"] = "application/json"  # the body was checked as JSON
        forwarded.update(self.upstream_headers)
        forwarded["accept-encoding"] = "identity"
        return await self._client.request(
            method, self.upstream_url(path, query), content=body or None, headers=forwarded
        )

    # -- websockets ---------------------------------------------------------------------------
    async def websocket(self, scope: dict, receive: Callable, send: Callable) -> None:
        path = (scope.get("raw_path") or b"").decode("latin-1")
        query = scope.get("query_string", b"").decode("latin-1")
        await receive()  # websocket.connect
        decision = decide(self.scope, "GET", path, query, None, self.objects, websocket=True)
        if not decision.allowed:
            self.deny(f"sandbox: denied websocket {path} ({decision.reason})", decision.reason)
            await send({"type": "websocket.close", "code": 1008})  # before accept: HTTP 403
            return
        url = "ws" + self.upstream_url(path).removeprefix("http")
        try:
            upstream = await websocket_connect(
                url, subprotocols=["prefect"], additional_headers=self.upstream_headers, max_size=MAX_MESSAGE_BYTES,
                open_timeout=10,
            )  # fmt: skip
            await upstream.send(json.dumps({"type": "auth", "token": websocket_token(self.upstream_headers)}))
            if json.loads(await upstream.recv()).get("type") != "auth_success":
                raise ConnectionError("the upstream refused the proxy's auth")
        except Exception as exc:  # noqa: BLE001 - refused, unreachable, timed out: the engine's client retries
            logger.warning("the Prefect event stream %s cannot be reached: %s", url, exc)
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1011})
            return
        try:
            await self.relay(scope, receive, send, upstream, events_in=path.rstrip("/").endswith("/in"))
        finally:
            await upstream.close()

    async def relay(self, scope: dict, receive: Callable, send: Callable, upstream: Any, *, events_in: bool) -> None:
        subprotocol = "prefect" if "prefect" in scope.get("subprotocols", []) else None
        await send({"type": "websocket.accept", "subprotocol": subprotocol})
        if subprotocol:  # the client's auth message: the socket is the credential, no token needed
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": json.dumps({"type": "auth_success"})})
        inbound = asyncio.create_task(self.to_upstream(receive, upstream, events_in))
        outbound = asyncio.create_task(self.to_engine(send, upstream, events_in))
        await asyncio.wait({inbound, outbound}, return_when=asyncio.FIRST_COMPLETED)
        for task in (inbound, outbound):
            task.cancel()
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": 1000})

    async def to_upstream(self, receive: Callable, upstream: Any, events_in: bool) -> None:
        subscribed = False
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            try:
                parsed = strict_json(text.encode()) if text is not None else None
            except (ValueError, RecursionError):
                parsed = None
            if events_in:
                decision = event_decision(self.scope, parsed)
                if not decision.allowed:
                    name = str(parsed.get("event"))[:100] if isinstance(parsed, dict) else "message"
                    self.deny(f"sandbox: dropped event {name} ({decision.reason})", decision.reason)
                    continue
                self.objects.remember_event(parsed)
                await upstream.send(text)
            elif not subscribed and (narrowed := own_events_filter(self.scope, parsed)) is not None:
                subscribed = True
                await upstream.send(json.dumps(narrowed))
            else:
                reason = "only one subscription to this job's events"
                self.deny(f"sandbox: dropped a message on /api/events/out ({reason})", reason)

    async def to_engine(self, send: Callable, upstream: Any, events_in: bool) -> None:
        async for message in upstream:
            if isinstance(message, bytes):
                continue
            if not events_in:
                try:
                    if not is_own_flow_run_event(self.scope, json.loads(message)):
                        continue
                except ValueError:
                    continue
            await send({"type": "websocket.send", "text": message})
