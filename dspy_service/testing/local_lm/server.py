"""A deterministic, OpenAI-compatible HTTP LM for tests and the offline demo.

This is a test/demo tool, not a language model. It reads the structure DSPy's adapters
write into a prompt (see ``prompts.py``) and answers every output field with a
well-formed value, so any signature parses; on the toy arithmetic task (``task.py``) it
follows a skill model under which prompt optimization measurably helps:

    difficulty = sha256 of the canonical question ("37 + 45")      -> [0, 1)
    skill      = 0.30 + 0.12 * min(few-shot demos, 4)
                 + 0.20 if the instructions contain a cue phrase
                   ("step by step", "carefully", "double-check", "exact"), capped at 0.95
    answer     = correct if difficulty < skill, else correct +/- 1..9 (fixed per question)

Demos are the assistant turns before the last user message. Proposer fields named
``*instruction*`` (MIPROv2, COPRO) get one of eight instructions picked by hashing the
prompt (half contain a cue phrase); GEPA's reflection prompt gets the current instruction
plus a cue sentence in a ``` block.

Endpoints (JSON in and out; errors as ``{"error": {"message", "type", "code"}}``):

    POST /v1/chat/completions   OpenAI chat completions (also /chat/completions); ``n`` gives
                                n identical choices; ``stream: true`` is served as SSE.
                                This is the only inference endpoint dspy 3.4.1 calls for
                                ``dspy.LM("openai/...", api_base=...)`` (model_type="chat",
                                the default), on both its lm15 and LiteLLM engines.
    GET  /v1/models             the model ids seen so far (plus "local-model")
    GET  /health                {"status": "ok"}
    GET  /stats                 calls, tokens, by_model, failed_calls, call_times (arrival
                                epoch seconds of the last 10000 successful calls)
    POST /stats/reset           zero the counters
    POST /faults                {"count": N, "status": 429|500|503, "delay_ms": opt,
                                "retry_after": opt seconds -> Retry-After header}: the next N
                                chat requests fail; {"count": 0} clears
    GET|POST /config            {"delay_ms": x}: latency added before every answer

Token usage is deterministic: prompt_tokens = ceil(chars of all message texts / 4),
completion_tokens = ceil(chars of the reply / 4) per choice, each at least 1.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .prompts import message_text, read_prompt
from .responder import compose_reply

logger = logging.getLogger("dspy_service.testing.local_lm")

CALL_TIMES_KEPT = 10_000
DEFAULT_MODEL = "local-model"
_ERROR_KINDS = {
    400: ("invalid_request_error", "invalid_request"),
    404: ("invalid_request_error", "not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", "internal_error"),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
}


def count_tokens(text_chars: int) -> int:
    return max(1, math.ceil(text_chars / 4))


@dataclass
class Fault:
    status: int
    delay_ms: float = 0.0
    retry_after: float | None = None


class _State:
    """Counters, fault queue and latency: everything requests share, behind one lock."""

    def __init__(self, delay_ms: float):
        self.lock = threading.Lock()
        self.delay_ms = float(delay_ms)
        self.fault_count = 0
        self.fault = Fault(429)
        self.models: set[str] = {DEFAULT_MODEL}
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.calls = 0
            self.failed_calls = 0
            self.prompt_tokens = 0
            self.completion_tokens = 0
            self.by_model: dict[str, dict[str, int]] = {}
            self.call_times: collections.deque[float] = collections.deque(maxlen=CALL_TIMES_KEPT)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "calls": self.calls,
                "failed_calls": self.failed_calls,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "by_model": {model: dict(counts) for model, counts in self.by_model.items()},
                "call_times": list(self.call_times),
            }

    def record(self, model: str, arrival: float, prompt_tokens: int, completion_tokens: int) -> None:
        with self.lock:
            self.calls += 1
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
            counts = self.by_model.setdefault(model, {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0})
            counts["calls"] += 1
            counts["prompt_tokens"] += prompt_tokens
            counts["completion_tokens"] += completion_tokens
            self.call_times.append(arrival)
            self.models.add(model)

    def set_faults(self, count: int, fault: Fault) -> None:
        with self.lock:
            self.fault_count = count
            self.fault = fault

    def take_fault(self) -> Fault | None:
        """Claim one injected failure; exactly `count` requests get one, whatever the concurrency."""
        with self.lock:
            if self.fault_count <= 0:
                return None
            self.fault_count -= 1
            self.failed_calls += 1
            return self.fault


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps connections alive: lm15 and httpx pool them, and a fresh TCP
    # connection per call would dominate the 20 ms benchmark latency.
    protocol_version = "HTTP/1.1"
    server_version = "dspy-service-local-lm/1.0"
    sys_version = ""
    timeout = 120  # idle keep-alive connections are dropped after this; clients detect it
    server: _HTTPServer

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
            with state.lock:
                models = sorted(state.models)
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "dspy-service"} for m in models]
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
        self.server.state.set_faults(int(body.get("count", 0)), fault)
        self._send_json(
            200,
            {
                "count": int(body.get("count", 0)),
                "status": fault.status,
                "delay_ms": fault.delay_ms,
                "retry_after": fault.retry_after,
            },
        )

    def _config(self, body: dict) -> None:
        if "delay_ms" in body:
            try:
                self.server.state.delay_ms = _non_negative(body["delay_ms"], "delay_ms")
            except ValueError as exc:
                self._send_error(400, str(exc))
                return
        self._send_json(200, {"delay_ms": self.server.state.delay_ms})

    # -- inference ------------------------------------------------------------------------

    def _chat_completions(self, body: dict, arrival: float) -> None:
        state = self.server.state
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            self._send_error(400, "'messages' must be a non-empty list")
            return
        model = str(body.get("model") or DEFAULT_MODEL)
        fault = state.take_fault()
        if fault is not None:
            time.sleep(fault.delay_ms / 1000)
            headers = {}
            if fault.retry_after is not None:
                headers = {"Retry-After": f"{fault.retry_after:g}", "retry-after-ms": f"{fault.retry_after * 1000:g}"}
            self._send_error(fault.status, f"Injected fault {fault.status} from the local test LM", headers)
            return
        if state.delay_ms > 0:
            time.sleep(state.delay_ms / 1000)
        response_format = body.get("response_format")
        content = compose_reply(read_prompt(messages, response_format), response_format)
        n = body.get("n") or 1
        n = max(1, min(int(n), 128)) if isinstance(n, int) else 1
        prompt_tokens = count_tokens(sum(len(message_text(m.get("content"))) for m in messages if isinstance(m, dict)))
        completion_tokens = count_tokens(len(content)) * n
        state.record(model, arrival, prompt_tokens, completion_tokens)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        completion_id = f"chatcmpl-local-{uuid.uuid4().hex[:24]}"
        created = int(arrival)
        if body.get("stream"):
            self._stream(completion_id, created, model, content, n, usage, body)
            return
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": "stop",
            }
            for i in range(n)
        ]
        self._send_json(
            200,
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": choices,
                "usage": usage,
            },
        )

    def _stream(
        self, completion_id: str, created: int, model: str, content: str, n: int, usage: dict, body: dict
    ) -> None:
        """Server-sent events, one content chunk per choice; the connection closes after."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
        chunks = [
            {
                **base,
                "choices": [{"index": i, "delta": {"role": "assistant", "content": content}, "finish_reason": None}],
            }
            for i in range(n)
        ]
        chunks += [{**base, "choices": [{"index": i, "delta": {}, "finish_reason": "stop"}]} for i in range(n)]
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({**base, "choices": [], "usage": usage})
        for chunk in chunks:
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")


def _non_negative(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative number")
    return float(value)


def parse_fault(body: dict) -> Fault:
    count = body.get("count", 0)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError("count must be a non-negative integer")
    status = body.get("status", 429)
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
        raise ValueError("status must be an HTTP error status (400-599), e.g. 429, 500 or 503")
    retry_after = body.get("retry_after")
    return Fault(
        status=status,
        delay_ms=_non_negative(body.get("delay_ms", 0), "delay_ms"),
        retry_after=None if retry_after is None else _non_negative(retry_after, "retry_after"),
    )


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never blocks shutdown
    block_on_close = False
    request_queue_size = 256  # the stdlib default backlog (5) drops bursts from thread pools

    def __init__(self, address: tuple[str, int], state: _State):
        super().__init__(address, _Handler)
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


class LocalLMServer:
    """The local test LM: binds on construction, serves after start(). Not a real model.

    ``url`` is the OpenAI base URL to pass as ``api_base`` (it ends in ``/v1``). The
    control methods act on the in-process state directly, without HTTP.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, delay_ms: float = 0):
        self._state = _State(_non_negative(delay_ms, "delay_ms"))
        self._httpd = _HTTPServer((host, port), self._state)
        self.host = host
        self.port: int = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def start(self) -> LocalLMServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.1},
                name=f"local-lm-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stats(self) -> dict[str, Any]:
        return self._state.snapshot()

    def reset(self) -> None:
        self._state.reset()

    def set_faults(self, count: int, status: int = 429, delay_ms: float = 0, retry_after: float | None = None) -> None:
        self._state.set_faults(
            count, parse_fault({"count": count, "status": status, "delay_ms": delay_ms, "retry_after": retry_after})
        )

    def set_delay(self, ms: float) -> None:
        self._state.delay_ms = _non_negative(ms, "delay_ms")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.drop_connections()
        self._httpd.server_close()

    def __enter__(self) -> LocalLMServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LocalLMServer(url={self.url!r})"


def start_local_lm(host: str = "127.0.0.1", port: int = 0, delay_ms: float = 0) -> LocalLMServer:
    """Start the local test LM on a daemon thread; ``port=0`` picks a free port."""
    return LocalLMServer(host, port, delay_ms).start()
