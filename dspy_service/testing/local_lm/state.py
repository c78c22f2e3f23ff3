"""What every request to the local test LM shares: call counters, the injected-fault
queue and the added latency, behind one lock; and the validation of control inputs.

Invalid control values (a negative delay, a fault status outside 400-599) raise
ValueError with a message fit for a 400 response.
"""

from __future__ import annotations

import collections
import math
import threading
from dataclasses import dataclass
from typing import Any

CALL_TIMES_KEPT = 10_000
AUTHORIZATIONS_KEPT = 1_000  # distinct Authorization headers remembered
DEFAULT_MODEL = "local-model"


REFUSAL = "I'm ready to assist you. Please provide the details of your request."


@dataclass
class Fault:
    """How the next injected failures answer: an HTTP error status, after `delay_ms`; only
    requests for `model` (any model when None) count, and the first `after` of them pass."""

    status: int
    delay_ms: float = 0.0
    retry_after: float | None = None
    model: str | None = None
    after: int = 0


def non_negative(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative number")
    return float(value)


def parse_fault(body: dict) -> Fault:
    """The fault a POST /faults body (or `set_faults`) asks for."""
    count = body.get("count", 0)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError("count must be a non-negative integer")
    status = body.get("status", 429)
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
        raise ValueError("status must be an HTTP error status (400-599), e.g. 429, 500 or 503")
    retry_after = body.get("retry_after")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ValueError("model must be a model name (a string)")
    after = body.get("after", 0)
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise ValueError("after must be a non-negative integer")
    return Fault(
        status=status,
        delay_ms=non_negative(body.get("delay_ms", 0), "delay_ms"),
        retry_after=None if retry_after is None else non_negative(retry_after, "retry_after"),
        model=model,
        after=after,
    )


class ServerState:
    """Counters, fault queue and latency: everything requests share, behind one lock."""

    def __init__(self, delay_ms: float):
        self.lock = threading.Lock()
        self.delay_ms = float(delay_ms)
        self.fault_count = 0
        self.fault = Fault(429)
        self.fault_passes = 0
        self.models: set[str] = {DEFAULT_MODEL}
        self.refusing: set[str] = set()  # models that answer REFUSAL to everything
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.calls = 0
            self.failed_calls = 0
            self.prompt_tokens = 0
            self.completion_tokens = 0
            self.by_model: dict[str, dict[str, int]] = {}
            self.call_times: collections.deque[float] = collections.deque(maxlen=CALL_TIMES_KEPT)
            self.authorizations: set[str] = set()

    def record_authorization(self, value: str | None) -> None:
        """Remember an `Authorization` header a chat request carried (tests check which key
        a job really sent); at most AUTHORIZATIONS_KEPT distinct values."""
        with self.lock:
            if value and len(self.authorizations) < AUTHORIZATIONS_KEPT:
                self.authorizations.add(value)

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

    def model_ids(self) -> list[str]:
        with self.lock:
            return sorted(self.models)

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
            self.fault_passes = fault.after

    def take_fault(self, model: str | None = None) -> Fault | None:
        """Claim one injected failure for a request to `model`; exactly `count` requests get
        one, whatever the concurrency."""
        with self.lock:
            if self.fault_count <= 0 or (self.fault.model is not None and self.fault.model != model):
                return None
            if self.fault_passes > 0:
                self.fault_passes -= 1
                return None
            self.fault_count -= 1
            self.failed_calls += 1
            return self.fault
