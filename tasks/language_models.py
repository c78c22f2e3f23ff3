"""Stage 2: ModelConfig -> metered `dspy.LM` per role, and a per-tenant response cache."""

from __future__ import annotations

import copy
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import dspy

from dspy_service.contract import Stage
from dspy_service.errors import JobError
from dspy_service.lm_cache import endpoint_identity, tenant_cache_dir
from dspy_service.schemas import JobSpec, ModelConfig
from dspy_service.secrets import job_block_reader, resolve_model_secrets, secret_values
from dspy_service.settings import get_settings
from tasks import stage
from tasks.lm_health import EndpointBreaker, check_endpoints, is_connection_failure
from tasks.stopping import raise_if_stopped

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


class MeteredLM(dspy.LM):
    """A `dspy.LM` that reports every finished call to the job's UsageMeter, and every
    failed one to it and to the job's EndpointBreaker (tasks/lm_health.py)."""

    def __init__(
        self,
        *args: Any,
        role: str,
        meter: UsageMeter,
        breaker: EndpointBreaker,
        price: TokenPrice | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.role = role
        self.meter = meter
        self.breaker = breaker
        self.price = price
        self.configured_retries = self.num_retries

    def update_history(self, entry: dict[str, Any]) -> None:
        super().update_history(entry)
        self.meter.record(self.role, entry, self.price)

    # A job told to stop (cancelled, out of time) sends no new LM request, nor does one
    # whose endpoint is unreachable. (Not via forward(): overriding it would switch DSPy
    # to its legacy custom-LM path.)
    def _before_call(self) -> None:
        raise_if_stopped()
        self.breaker.check()
        # While the endpoint looks gone, DSPy's retries (minutes of backoff) only hide it.
        self.num_retries = 0 if self.breaker.suspect else self.configured_retries

    def _failed(self, exc: Exception) -> None:
        self.meter.record_error(self.role)
        if is_connection_failure(exc):
            self.breaker.failed(str(self.kwargs.get("api_base") or self.model), exc)

    def __call__(self, *args: Any, **kwargs: Any):
        self._before_call()
        try:
            answer = super().__call__(*args, **kwargs)
        except Exception as exc:
            self._failed(exc)
            raise
        self.breaker.succeeded()
        return answer

    async def acall(self, *args: Any, **kwargs: Any):
        self._before_call()
        try:
            answer = await super().acall(*args, **kwargs)
        except Exception as exc:
            self._failed(exc)
            raise
        self.breaker.succeeded()
        return answer


@dataclass
class JobLMs:
    main: dspy.LM
    by_role: dict[str, dspy.LM]
    meter: UsageMeter
    breaker: EndpointBreaker
    secrets: list[str] = field(default_factory=list)  # api keys and header values, to check artifacts against

    def get(self, role: str) -> dspy.LM | None:
        return self.by_role.get(role)


def configure_job_cache(spec: JobSpec) -> None:
    directory = tenant_cache_dir(spec, get_settings())
    if directory is None:
        dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
        return
    dspy.configure_cache(enable_disk_cache=True, enable_memory_cache=True, disk_cache_dir=str(directory))


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


def build_lm(
    config: ModelConfig, *, role: str, meter: UsageMeter, cache: bool, breaker: EndpointBreaker | None = None
) -> MeteredLM:
    field_name = "model_config" if role == "main" else f"{role}_model_config"
    problem = config.settings_problem(field_name)  # the API refuses these; a stored schedule may predate that
    if problem:
        raise JobError(problem[1], field=problem[0])
    kwargs: dict[str, Any] = copy.deepcopy(config.extra)
    price = take_price(kwargs, field_name)
    if config.base_url:
        kwargs["api_base"] = config.base_url
    if config.top_p is not None:
        kwargs["top_p"] = config.top_p
    model_type = (config.model_extra or {}).get("model_type")
    if model_type in LM_MODEL_TYPES:
        kwargs["model_type"] = model_type
    kwargs["cache"] = bool(kwargs.get("cache", True)) and cache
    # Transient provider errors (429, 5xx, timeouts, connection errors) are retried per
    # call by DSPy with exponential backoff or the provider's Retry-After; a model's
    # `extra.num_retries` overrides the service default.
    kwargs.setdefault("num_retries", get_settings().lm_num_retries)
    try:
        return MeteredLM(
            config.name,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            role=role,
            meter=meter,
            breaker=breaker or EndpointBreaker(get_settings().lm_unreachable_calls),
            price=price,
            **kwargs,
        )
    except Exception as exc:  # DSPy validates model names and parameter combinations
        raise JobError(f"{field_name}: cannot build LM {config.name!r}: {exc}", field=field_name) from None


@stage(Stage.BUILD_LMS)
def build_language_models(spec: JobSpec) -> JobLMs:
    """One metered LM per configured role, sharing a per-tenant response cache; the
    secrets the job's references name are read here (and only here)."""
    spec = resolve_model_secrets(spec, job_block_reader(os.environ))
    configs = spec.lm_configs()
    check_endpoints({f"{spec.role_field(role)}.base_url": c.base_url for role, c in configs.items() if c.base_url})
    configure_job_cache(spec)
    meter = UsageMeter()
    breaker = EndpointBreaker(get_settings().lm_unreachable_calls)
    # Two roles on the same model name but different endpoints or keys would share cache
    # entries (DSPy's key ignores api_base/api_key): only the first of them caches.
    seen: dict[str, tuple[str, str, str]] = {}
    by_role: dict[str, dspy.LM] = {}
    for role, config in configs.items():
        identity = endpoint_identity(config)
        cache = seen.setdefault(config.name, identity) == identity
        by_role[role] = build_lm(config, role=role, meter=meter, cache=cache, breaker=breaker)
    secrets = [value for config in configs.values() for value in secret_values(config)]
    return JobLMs(main=by_role["main"], by_role=by_role, meter=meter, breaker=breaker, secrets=secrets)
