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
                                "retry_after": opt seconds -> Retry-After header, "model":
                                opt name (only its requests count), "after": opt K (the
                                first K of them pass)}: the next N chat requests fail;
                                {"count": 0} clears
    GET|POST /config            {"delay_ms": x}: latency added before every answer;
                                {"refuse_models": [names]}: those models answer a refusal
                                ("I'm ready to assist you...") to every request

Token usage is deterministic: prompt_tokens = ceil(chars of all message texts / 4),
completion_tokens = ceil(chars of the reply / 4) per choice, each at least 1.

Modules: ``server.py`` (this: the server object tests start and steer), ``handler.py``
(HTTP routes and errors), ``completions.py`` (the answer body), ``state.py`` (counters,
faults, latency), ``prompts.py`` (reading DSPy's prompts), ``responder.py`` (the reply),
``task.py`` (the toy task). Binding a port that is taken raises OSError.
"""

from __future__ import annotations

import threading
from typing import Any

from .handler import LocalLMHTTPServer
from .state import ServerState, non_negative, parse_fault


class LocalLMServer:
    """The local test LM: binds on construction, serves after start(). Not a real model.

    ``url`` is the OpenAI base URL to pass as ``api_base`` (it ends in ``/v1``). The
    control methods act on the in-process state directly, without HTTP.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, delay_ms: float = 0):
        self._state = ServerState(non_negative(delay_ms, "delay_ms"))
        self._httpd = LocalLMHTTPServer((host, port), self._state)
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

    def authorizations(self) -> set[str]:
        """The distinct `Authorization` headers chat requests carried since the last reset."""
        with self._state.lock:
            return set(self._state.authorizations)

    def set_faults(
        self,
        count: int,
        status: int = 429,
        delay_ms: float = 0,
        retry_after: float | None = None,
        model: str | None = None,
        after: int = 0,
    ) -> None:
        body = {"count": count, "status": status, "delay_ms": delay_ms, "retry_after": retry_after}
        self._state.set_faults(count, parse_fault({**body, "model": model, "after": after}))

    def refuse(self, *models: str) -> None:
        """Requests for these models (none: stop refusing) get a refusal instead of an answer."""
        self._state.refusing = set(models)

    def set_delay(self, ms: float) -> None:
        self._state.delay_ms = non_negative(ms, "delay_ms")

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
