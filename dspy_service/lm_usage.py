"""LM usage and the arguments of a `dspy.LM` built from a ModelConfig, shared by jobs
(tasks/language_models.py) and the program server's children (deployments/program_server/).

`UsageMeter` counts calls, tokens, cost, failed calls (per cause, secrets scrubbed) and
retry attempts per role, and tells listeners of each retry wait; `CountingLM` is a
`dspy.LM` that reports every finished call to one. `lm_arguments` turns a ModelConfig
(secrets already merged) into `dspy.LM` keyword arguments and the config's own token price.

How it fails: `take_price` / `lm_arguments` raise JobError naming the field for prices that
are not two non-negative numbers. Nothing here does I/O.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dspy

from dspy_service.error_causes import CauseTally
from dspy_service.errors import JobError
from dspy_service.schemas import ModelConfig

LM_MODEL_TYPES = {"chat", "text", "responses"}
# ModelConfig.extra keys that set the job's own price (USD per token) instead of DSPy's
# price metadata; they are taken out before the rest of `extra` reaches the LM.
PRICE_KEYS = ("input_cost_per_token", "output_cost_per_token")


@dataclass(frozen=True)
class TokenPrice:
    input_cost_per_token: float
    output_cost_per_token: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.input_cost_per_token + completion_tokens * self.output_cost_per_token


@dataclass
class RoleUsage:
    calls: int = 0
    errors: int = 0  # calls that failed after DSPy's retries (a call the job refused itself is none)
    retries: int = 0  # attempts DSPy made again after a transient error (each one waited first)
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    priced_calls: int = 0


# What a retry listener gets: {"role", "attempt" (1 = the first retry), "wait_seconds",
# "error" (the error that is retried, secrets scrubbed)}.
RetryListener = Callable[[dict[str, Any]], None]


class UsageMeter:
    """Exact LM usage per role, shared by every copy of the job's LMs and every thread.

    DSPy's own `track_usage` under-counts under ParallelExecutor, which deep-copies its
    tracker per thread; this meter survives deep copies as the same object. `secrets`
    (the job's keys and header values) are scrubbed from every error it keeps or tells.
    """

    def __init__(self, secrets: list[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._roles: dict[str, RoleUsage] = {}
        self.secrets = list(secrets or [])
        self._errors: dict[str, CauseTally] = {}
        self._retry_listeners: list[RetryListener] = []

    def __deepcopy__(self, memo: dict) -> UsageMeter:
        return self

    def __reduce__(self):  # never pickled along with a program: LMs are stripped first
        return (UsageMeter, ())

    def record(self, role: str, entry: dict[str, Any], price: TokenPrice | None = None) -> None:
        """Count one finished LM call (as the requests it sent: `requests_sent`); `price`
        (the job's own) wins over DSPy's estimate."""
        usage = entry.get("usage") or {}
        with self._lock:
            role_usage = self._roles.setdefault(role, RoleUsage())
            if not usage:
                # DSPy reports cache hits with empty usage (nothing was paid for).
                role_usage.cache_hits += 1
                return
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or 0)
            role_usage.calls += requests_sent(entry)
            role_usage.prompt_tokens += prompt_tokens
            role_usage.completion_tokens += completion_tokens
            cost = price.cost(prompt_tokens, completion_tokens) if price is not None else entry.get("cost")
            if cost is not None:
                role_usage.cost += float(cost)
                role_usage.priced_calls += 1

    def _tally(self, role: str) -> CauseTally:
        with self._lock:
            self._roles.setdefault(role, RoleUsage())
            return self._errors.setdefault(role, CauseTally(secrets=self.secrets))

    def record_error(self, role: str, exc: BaseException | None = None) -> None:
        """Count one failed call (after its retries); `exc` is counted per cause."""
        tally = self._tally(role)
        with self._lock:
            self._roles[role].errors += 1
        if exc is not None:
            tally.record(exc)

    def on_retry(self, listener: RetryListener) -> None:
        with self._lock:
            self._retry_listeners.append(listener)

    def record_retry(self, role: str, attempt: int, wait_seconds: float, exc: BaseException) -> None:
        """Count one retry that is about to wait `wait_seconds`, and tell the listeners
        (a listener that fails is ignored: telling must not change the call)."""
        event = {
            "role": role,
            "attempt": attempt,
            "wait_seconds": round(float(wait_seconds), 3),
            "error": self.describe_error(exc),
        }
        with self._lock:
            self._roles.setdefault(role, RoleUsage()).retries += 1
            listeners = list(self._retry_listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001, S112 - progress reporting is best-effort
                continue

    def counted(self, role: str | None = None) -> tuple[int, int, float]:
        """(requests answered or failed, tokens, cost) of one role or of all: what a budget
        counts (answers from the cache were not paid for and are not counted)."""
        with self._lock:
            roles = [self._roles[role]] if role in self._roles else [] if role else list(self._roles.values())
            return (
                sum(r.calls + r.errors for r in roles),
                sum(r.prompt_tokens + r.completion_tokens for r in roles),
                sum(r.cost for r in roles),
            )

    def snapshot(self) -> dict[str, Any]:
        """Usage per role and in total. `cost` is an estimate in USD; `cost_known` is true
        only when every paid call had a price (DSPy's price metadata or the job's own).
        Each role also lists its `top_errors` ([{"error", "count"}], most frequent first)."""
        with self._lock:
            roles = {role: dict(vars(usage)) for role, usage in self._roles.items()}
            tallies = dict(self._errors)
        totals = {key: sum(r[key] for r in roles.values()) for key in vars(RoleUsage())}
        for usage in (*roles.values(), totals):
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            usage["cost"] = round(usage["cost"], 8)
            usage["cost_known"] = usage["priced_calls"] == usage["calls"]
        for role, usage in roles.items():
            usage["top_errors"] = tallies[role].top() if role in tallies else []
        return {"by_role": roles, "total": totals}

    def describe_error(self, exc: BaseException) -> str:
        """An error as the meter shows it: one line, secrets scrubbed."""
        return CauseTally(secrets=self.secrets).describe_error(exc)

    def knows_error(self, exc: BaseException) -> bool:
        """Whether a failed call ended with an error of this cause."""
        with self._lock:
            tallies = list(self._errors.values())
        return any(tally.knows(exc) for tally in tallies)

    def describe_errors(self) -> str | None:
        """The failed calls of the role whose most frequent cause is the most frequent of
        all, in a user's words: "11 of 12 main-model calls failed: BadRequestError: ...".
        None when no call failed."""
        with self._lock:
            tallies = dict(self._errors)
            roles = {role: (usage.errors, usage.calls + usage.errors) for role, usage in self._roles.items()}
        leading = [(tally.top(1)[0], role) for role, tally in tallies.items() if tally.count]
        if not leading:
            return None
        cause, role = max(leading, key=lambda item: item[0]["count"])
        failed, made = roles[role]
        often = "" if cause["count"] == failed else f", most often ({cause['count']})"
        return f"{failed} of {made} {role}-model calls failed{often}: {cause['error']}"


def requests_sent(entry: dict[str, Any]) -> int:
    """The requests behind one answered call of a `dspy.LM` (its history entry). A call for
    n > 1 completions on DSPy's native engine is n requests, one per completion (dspy
    3.4.1 `clients/execution.py`), and its entry's `response` is their n responses; on the
    LiteLLM path it is one request asking for n choices (`response` is that one answer).
    Not seen: a call that fails part-way counts as one failed request, without the
    requests answered before it (DSPy keeps no history entry for it)."""
    response = entry.get("response")
    return len(response) if isinstance(response, (tuple, list)) and response else 1


def requests_asked(lm_kwargs: dict[str, Any], call_kwargs: dict[str, Any]) -> int:
    """The most requests one call may send: its `n` (the call's, else the LM's), as DSPy
    reads it; what a budget must have room for before the call."""
    n = call_kwargs.get("n", lm_kwargs.get("n"))
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1


class CountingLM(dspy.LM):
    """A `dspy.LM` that reports every finished call to a UsageMeter."""

    def __init__(self, *args: Any, role: str, meter: UsageMeter, price: TokenPrice | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.role = role
        self.meter = meter
        self.price = price

    def update_history(self, entry: dict[str, Any]) -> None:
        super().update_history(entry)
        self.meter.record(self.role, entry, self.price)


def take_price(kwargs: dict[str, Any], field_name: str) -> TokenPrice | None:
    """Pop the job's own per-token prices out of the LM kwargs (both or neither)."""
    given = {key: kwargs.pop(key) for key in PRICE_KEYS if key in kwargs}
    if not given:
        return None
    try:
        prices = {key: float(given[key]) for key in PRICE_KEYS}
    except (KeyError, TypeError, ValueError):
        raise JobError(
            f"{field_name}.extra: give both {' and '.join(PRICE_KEYS)} as numbers (USD per token)",
            field=field_name,
        ) from None
    if min(prices.values()) < 0:
        raise JobError(f"{field_name}.extra: token prices must be >= 0", field=field_name)
    return TokenPrice(**prices)



def lm_arguments(config: ModelConfig, field_name: str, num_retries: int) -> tuple[dict[str, Any], TokenPrice | None]:
    """(keyword arguments of `dspy.LM(config.name, **kwargs)`, the config's own price)."""
    kwargs: dict[str, Any] = copy.deepcopy(config.extra)
    price = take_price(kwargs, field_name)
    if config.base_url:
        kwargs["api_base"] = config.base_url
    if config.top_p is not None:
        kwargs["top_p"] = config.top_p
    model_type = (config.model_extra or {}).get("model_type")
    if model_type in LM_MODEL_TYPES:
        kwargs["model_type"] = model_type
    # Transient provider errors (429, 5xx, timeouts, connection errors) are retried per
    # call by DSPy with exponential backoff or the provider's Retry-After; a model's
    # `extra.num_retries` overrides the service default.
    kwargs.setdefault("num_retries", num_retries)
    kwargs["temperature"] = config.temperature
    kwargs["max_tokens"] = config.max_tokens
    return kwargs, price
