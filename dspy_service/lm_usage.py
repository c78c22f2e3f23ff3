"""LM usage and the arguments of a `dspy.LM` built from a ModelConfig, shared by jobs
(tasks/language_models.py) and the program server's children (deployments/program_server/).

`UsageMeter` counts calls, tokens and cost per role; `CountingLM` is a `dspy.LM` that
reports every finished call to one. `lm_arguments` turns a ModelConfig (secrets already
merged) into `dspy.LM` keyword arguments and the config's own token price.

How it fails: `take_price` / `lm_arguments` raise JobError naming the field for prices that
are not two non-negative numbers. Nothing here does I/O.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from typing import Any

import dspy

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
    errors: int = 0  # calls that failed after DSPy's retries (or were refused by the breaker)
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    priced_calls: int = 0


class UsageMeter:
    """Exact LM usage per role, shared by every copy of the job's LMs and every thread.

    DSPy's own `track_usage` under-counts under ParallelExecutor, which deep-copies its
    tracker per thread; this meter survives deep copies as the same object.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._roles: dict[str, RoleUsage] = {}

    def __deepcopy__(self, memo: dict) -> UsageMeter:
        return self

    def __reduce__(self):  # never pickled along with a program: LMs are stripped first
        return (UsageMeter, ())

    def record(self, role: str, entry: dict[str, Any], price: TokenPrice | None = None) -> None:
        """Count one finished LM call; `price` (the job's own) wins over DSPy's estimate."""
        usage = entry.get("usage") or {}
        with self._lock:
            role_usage = self._roles.setdefault(role, RoleUsage())
            if not usage:
                # DSPy reports cache hits with empty usage (nothing was paid for).
                role_usage.cache_hits += 1
                return
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or 0)
            role_usage.calls += 1
            role_usage.prompt_tokens += prompt_tokens
            role_usage.completion_tokens += completion_tokens
            cost = price.cost(prompt_tokens, completion_tokens) if price is not None else entry.get("cost")
            if cost is not None:
                role_usage.cost += float(cost)
                role_usage.priced_calls += 1

    def record_error(self, role: str) -> None:
        with self._lock:
            self._roles.setdefault(role, RoleUsage()).errors += 1

    def snapshot(self) -> dict[str, Any]:
        """Usage per role and in total. `cost` is an estimate in USD; `cost_known` is true
        only when every paid call had a price (DSPy's price metadata or the job's own)."""
        with self._lock:
            roles = {role: dict(vars(usage)) for role, usage in self._roles.items()}
        totals = {key: sum(r[key] for r in roles.values()) for key in vars(RoleUsage())}
        for usage in (*roles.values(), totals):
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            usage["cost"] = round(usage["cost"], 8)
            usage["cost_known"] = usage["priced_calls"] == usage["calls"]
        return {"by_role": roles, "total": totals}


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
