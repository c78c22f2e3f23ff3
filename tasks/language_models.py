"""Stage 2: ModelConfig -> metered `dspy.LM` per role, and a per-tenant response cache."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import dspy

from dspy_service.contract import Stage
from dspy_service.errors import JobError
from dspy_service.lm_cache import endpoint_identity, tenant_cache_dir
from dspy_service.lm_usage import (  # noqa: F401 - re-exported for the stages
    LM_MODEL_TYPES,
    PRICE_KEYS,
    RoleUsage,
    TokenPrice,
    UsageMeter,
    lm_arguments,
    take_price,
)
from dspy_service.schemas import JobSpec, ModelConfig
from dspy_service.secrets import job_block_reader, resolve_model_secrets, secret_values
from dspy_service.settings import get_settings
from tasks import stage
from tasks.lm_health import EndpointBreaker, check_endpoints, is_connection_failure
from tasks.stopping import raise_if_stopped


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


def build_lm(
    config: ModelConfig, *, role: str, meter: UsageMeter, cache: bool, breaker: EndpointBreaker | None = None
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
