"""The local test LM's HTTP layer: routes, control endpoints, error bodies, and the
threading server that tracks its keep-alive connections so it can close them.

Every error is answered OpenAI-style, ``{"error": {"message", "type", "code"}}``: 400
for a body that is not a JSON object or an invalid control value, 404 for an unknown
route; clients hanging up mid-response are logged at DEBUG and otherwise ignored.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .completions import complete
from .state import DEFAULT_MODEL, ServerState, non_negative, parse_fault

logger = logging.getLogger("dspy_service.testing.local_lm")

_ERROR_KINDS = {
    400: ("invalid_request_error", "invalid_request"),
    404: ("invalid_request_error", "not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", "internal_error"),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
}


class RequestHandler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps connections alive: lm15 and httpx pool them, and a fresh TCP
    # connection per call would dominate the 20 ms benchmark latency.
    protocol_version = "HTTP/1.1"
    server_version = "dspy-service-local-lm/1.0"
    sys_version = ""
    timeout = 120  # idle keep-alive connections are dropped after this; clients detect it
    server: LocalLMHTTPServer

    # -- plumbing -------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug("%s " + format, self.address_string(), *args)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        kind, code = _ERROR_KINDS.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", str(status))
        )
        self._send_json(status, {"error": {"message": message, "type": kind, "code": code}}, headers)

    def _read_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if not raw.strip():
            return {}
        return json.loads(raw)

    def _route(self) -> str:
        path = self.path.split("?", 1)[0].rstrip("/")
        return path or "/"

    # -- dispatch ---------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        route = self._route()
        state = self.server.state
        if route == "/health":
            self._send_json(200, {"status": "ok"})
        elif route in ("/v1/models", "/models"):
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "dspy-service"} for m in state.model_ids()]
            self._send_json(200, {"object": "list", "data": data})
        elif route == "/stats":
            self._send_json(200, state.snapshot())
        elif route == "/config":
            self._send_json(200, {"delay_ms": state.delay_ms})
        else:
            self._send_error(404, f"No route GET {route} on the local test LM")

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        arrival = time.time()
        route = self._route()
        try:
            body = self._read_json()
        except (ValueError, UnicodeDecodeError) as exc:
            self._send_error(400, f"Request body is not valid JSON: {exc}")
            return
        if not isinstance(body, dict):
            self._send_error(400, "Request body must be a JSON object")
            return
        if route in ("/v1/chat/completions", "/chat/completions"):
            self._chat_completions(body, arrival)
        elif route == "/stats/reset":
            self.server.state.reset()
            self._send_json(200, self.server.state.snapshot())
        elif route == "/faults":
            self._faults(body)
        elif route == "/config":
            self._config(body)
        else:
            # Deliberately no /v1/responses: dspy only calls it for model_type="responses".
            self._send_error(404, f"No route POST {route} on the local test LM (it serves /v1/chat/completions)")

    # -- control endpoints --------------------------------------------------------------

    def _faults(self, body: dict) -> None:
        try:
            fault = parse_fault(body)
        except ValueError as exc:
            self._send_error(400, str(exc))
            return
        count = int(body.get("count", 0))
        self.server.state.set_faults(count, fault)
        answer = {"count": count, "status": fault.status, "delay_ms": fault.delay_ms, "retry_after": fault.retry_after,
                  "model": fault.model, "after": fault.after}
        self._send_json(200, answer)

    def _config(self, body: dict) -> None:
        if "delay_ms" in body:
            try:
                self.server.state.delay_ms = non_negative(body["delay_ms"], "delay_ms")
            except ValueError as exc:
                self._send_error(400, str(exc))
                return
        if "refuse_models" in body:
            models = body["refuse_models"]
            if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
                self._send_error(400, "refuse_models must be a list of model names")
                return
            self.server.state.refusing = set(models)
        state = self.server.state
        self._send_json(200, {"delay_ms": state.delay_ms, "refuse_models": sorted(state.refusing)})

    # -- inference ------------------------------------------------------------------------

    def _chat_completions(self, body: dict, arrival: float) -> None:
        state = self.server.state
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            self._send_error(400, "'messages' must be a non-empty list")
            return
        state.record_authorization(self.headers.get("Authorization"))
        fault = state.take_fault(str(body.get("model") or DEFAULT_MODEL))
        if fault is not None:
            time.sleep(fault.delay_ms / 1000)
            headers = {}
            if fault.retry_after is not None:
                headers = {"Retry-After": f"{fault.retry_after:g}", "retry-after-ms": f"{fault.retry_after * 1000:g}"}
            self._send_error(fault.status, f"Injected fault {fault.status} from the local test LM", headers)
            return
        if state.delay_ms > 0:
            time.sleep(state.delay_ms / 1000)
        completion = complete(state, body, arrival)
        if not body.get("stream"):
            self._send_json(200, completion.body())
            return
        # Server-sent events; the connection closes after them.
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for chunk in completion.chunks(bool((body.get("stream_options") or {}).get("include_usage"))):
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")


class LocalLMHTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never blocks shutdown
    block_on_close = False
    request_queue_size = 256  # the stdlib default backlog (5) drops bursts from thread pools

    def __init__(self, address: tuple[str, int], state: ServerState):
        super().__init__(address, RequestHandler)
        self.state = state
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, connection: socket.socket, alive: bool) -> None:
        with self._connections_lock:
            (self._connections.add if alive else self._connections.discard)(connection)

    def drop_connections(self) -> None:
        """Wake handler threads parked on idle keep-alive sockets so close() frees them."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-response (timeouts, cancelled threads) are normal here.
        logger.debug("error serving %s", client_address, exc_info=True)
