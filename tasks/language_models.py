"""Stage 2: ModelConfig -> metered `dspy.LM` per role, and a per-tenant response cache."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import dspy

from dspy_service.budget import JOB
from dspy_service.contract import Stage, engine_is_sandboxed
from dspy_service.errors import JobError
from dspy_service.lm_cache import endpoint_identity, tenant_cache_dir
from dspy_service.lm_cache_protocol import LM_CACHE_SOCKET_ENV
from dspy_service.lm_usage import (  # noqa: F401 - re-exported for the stages
    LM_MODEL_TYPES,
    PRICE_KEYS,
    RoleUsage,
    TokenPrice,
    UsageMeter,
    lm_arguments,
    requests_asked,
    take_price,
)
from dspy_service.schemas import JobSpec, ModelConfig
from dspy_service.secrets import job_block_reader, resolve_model_secrets, secret_values
from dspy_service.settings import get_settings
from tasks import stage
from tasks.budget import BudgetExhausted, BudgetGuard
from tasks.lm_cache_client import SocketDiskCache
from tasks.lm_health import EndpointBreaker, LMUnreachable, check_endpoints, is_connection_failure
from tasks.lm_retries import install as install_retry_reporting
from tasks.lm_retries import retries_reported_to
from tasks.stopping import JobStopped, raise_if_stopped


class MeteredLM(dspy.LM):
    """A `dspy.LM` that reports every finished call to the job's UsageMeter, every retry
    to it before the wait (tasks/lm_retries.py), and every failed call to it and to the
    job's EndpointBreaker (tasks/lm_health.py)."""

    def __init__(
        self,
        *args: Any,
        role: str,
        meter: UsageMeter,
        breaker: EndpointBreaker,
        price: TokenPrice | None = None,
        budget: BudgetGuard | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.role = role
        self.meter = meter
        self.breaker = breaker
        self.price = price
        self.budget = budget
        self.configured_retries = self.num_retries
        install_retry_reporting()

    def update_history(self, entry: dict[str, Any]) -> None:
        super().update_history(entry)
        self.meter.record(self.role, entry, self.price)

    # A job told to stop (cancelled, out of time) sends no new LM request, nor does one
    # whose endpoint is unreachable or whose budget has no room for it (tasks/budget.py).
    # (Not via forward(): overriding it would switch DSPy to its legacy custom-LM path.)
    # A call for n > 1 completions may send n requests (dspy_service/lm_usage.py
    # `requests_sent`): the budget makes room for all of them before it.
    def _before_call(self, requests: int) -> None:
        raise_if_stopped()
        self.breaker.check()
        # While the endpoint looks gone, DSPy's retries (minutes of backoff) only hide it.
        self.num_retries = 0 if self.breaker.suspect else self.configured_retries
        if self.budget is not None:
            self.budget.admit(requests)

    def _after_call(self, requests: int) -> None:
        if self.budget is not None:
            self.budget.release(requests)

    def _retrying(self, attempt: int, wait_seconds: float, exc: BaseException) -> None:
        # A stopped job or an open breaker ends the call here instead of after the wait.
        raise_if_stopped()
        self.breaker.check()
        self.meter.record_retry(self.role, attempt, wait_seconds, exc)

    def _failed(self, exc: Exception) -> None:
        if isinstance(exc, (JobStopped, LMUnreachable, BudgetExhausted)):  # the job's own refusal, not the LM's
            return
        self.meter.record_error(self.role, exc)
        if is_connection_failure(exc):
            self.breaker.failed(str(self.kwargs.get("api_base") or self.model), exc)

    def __call__(self, *args: Any, **kwargs: Any):
        requests = requests_asked(self.kwargs, kwargs)
        self._before_call(requests)
        try:
            with retries_reported_to(self._retrying):
                answer = super().__call__(*args, **kwargs)
        except Exception as exc:
            self._failed(exc)
            raise
        finally:
            self._after_call(requests)
        self.breaker.succeeded()
        return answer

    async def acall(self, *args: Any, **kwargs: Any):
        requests = requests_asked(self.kwargs, kwargs)
        self._before_call(requests)
        try:
            with retries_reported_to(self._retrying):
                answer = await super().acall(*args, **kwargs)
        except Exception as exc:
            self._failed(exc)
            raise
        finally:
            self._after_call(requests)
        self.breaker.succeeded()
        return answer


# What DSPy's ParallelExecutor and Prefect raise in place of the errors behind them.
WRAPPER_TEXTS = (
    "Execution cancelled due to errors or interruption",
    "Engine execution exited with unexpected exception",
)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def explain_failure(failure: str, exc: BaseException, meter: UsageMeter | None) -> str:
    """A stage's failure message led by the LM errors behind it ("11 of 12 main-model calls
    failed: LMInvalidRequestError: ...; compile-program failed: ..."): when the exception is
    (or wraps) an LM error, or is only a wrapper's text. Recorded LM errors that did not
    cause it follow it instead; a wrapper with no LM error behind it points to the logs."""
    from dspy.utils.exceptions import LMError

    lead = meter.describe_errors() if meter is not None else None
    chain = _chain(exc)
    wrapper = any(text in str(exc) for text in WRAPPER_TEXTS)
    if lead is None:
        return f"{failure} (the errors behind it are in the job's logs)" if wrapper else failure
    if wrapper or any(isinstance(e, LMError) or meter.knows_error(e) for e in chain):
        own = f": {type(exc).__name__}: {exc}"
        if failure.endswith(own) and meter.describe_error(exc) in lead:  # said once is enough
            failure = failure[: -len(own)]
        return f"{lead}; {failure}"
    return f"{failure} (meanwhile {lead})"


@dataclass
class JobLMs:
    main: dspy.LM
    by_role: dict[str, dspy.LM]
    meter: UsageMeter
    breaker: EndpointBreaker
    secrets: list[str] = field(default_factory=list)  # api keys and header values, to check artifacts against
    budget: BudgetGuard | None = None  # the job's `budget`, enforced at every LM call

    def get(self, role: str) -> dspy.LM | None:
        return self.by_role.get(role)


def configure_job_cache(spec: JobSpec) -> None:
    """DSPy's cache for this job: in memory, over the tenant scope's shared store. In the
    sandbox that store is the supervisor's cache server (tasks/lm_cache_client.py; no cache
    directory is mounted); without a sandbox, DSPy's own disk cache in the scope directory."""
    settings = get_settings()
    if not settings.lm_cache:
        dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
        return
    if engine_is_sandboxed(os.environ):
        dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)
        socket_path = os.environ.get(LM_CACHE_SOCKET_ENV)
        if socket_path:  # none: the supervisor found no scope; the job fails on its secrets
            dspy.cache.disk_cache = SocketDiskCache(socket_path, max_entry_bytes=settings.lm_cache_entry_bytes)
            dspy.cache.enable_disk_cache = True
        return
    directory = tenant_cache_dir(spec, settings)
    dspy.configure_cache(enable_disk_cache=True, enable_memory_cache=True, disk_cache_dir=str(directory))


def build_lm(
    config: ModelConfig,
    *,
    role: str,
    meter: UsageMeter,
    cache: bool,
    breaker: EndpointBreaker | None = None,
    budget: BudgetGuard | None = None,
) -> MeteredLM:
    field_name = "model_config" if role == "main" else f"{role}_model_config"
    problem = config.settings_problem(field_name)  # the API refuses these; a stored schedule may predate that
    if problem:
        raise JobError(problem[1], field=problem[0])
    kwargs, price = lm_arguments(config, field_name, get_settings().lm_num_retries)
    kwargs["cache"] = bool(kwargs.get("cache", True)) and cache
    try:
        return MeteredLM(
            config.name,
            role=role,
            meter=meter,
            breaker=breaker or EndpointBreaker(get_settings().lm_unreachable_calls),
            price=price,
            budget=budget,
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
    secrets = [value for config in configs.values() for value in secret_values(config)]
    meter = UsageMeter(secrets=secrets)
    breaker = EndpointBreaker(get_settings().lm_unreachable_calls)
    budget = None
    if spec.budget is not None and spec.budget.limits():
        budget = BudgetGuard(spec.budget, meter, source=spec.budget_source or JOB)
    # Two roles on the same model name but different endpoints or keys would share cache
    # entries (DSPy's key ignores api_base/api_key): only the first of them caches.
    seen: dict[str, tuple[str, str, str]] = {}
    by_role: dict[str, dspy.LM] = {}
    for role, config in configs.items():
        identity = endpoint_identity(config)
        cache = seen.setdefault(config.name, identity) == identity
        by_role[role] = build_lm(config, role=role, meter=meter, cache=cache, breaker=breaker, budget=budget)
    return JobLMs(
        main=by_role["main"], by_role=by_role, meter=meter, breaker=breaker, secrets=secrets, budget=budget
    )
