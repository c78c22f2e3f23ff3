"""Stage 2: ModelConfig -> metered `dspy.LM` per role, and a per-tenant response cache."""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any

import dspy

from dspy_service.errors import JobError
from dspy_service.schemas import JobSpec, ModelConfig
from dspy_service.settings import get_settings
from dspy_service.stopping import raise_if_stopped
from tasks import stage

LM_MODEL_TYPES = {"chat", "text", "responses"}


@dataclass
class RoleUsage:
    calls: int = 0
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

    def record(self, role: str, entry: dict[str, Any]) -> None:
        usage = entry.get("usage") or {}
        with self._lock:
            role_usage = self._roles.setdefault(role, RoleUsage())
            if not usage:
                # DSPy reports cache hits with empty usage (nothing was paid for).
                role_usage.cache_hits += 1
                return
            role_usage.calls += 1
            role_usage.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            role_usage.completion_tokens += int(usage.get("completion_tokens") or 0)
            if entry.get("cost") is not None:
                role_usage.cost += float(entry["cost"])
                role_usage.priced_calls += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            roles = {role: dict(vars(usage)) for role, usage in self._roles.items()}
        totals = {key: sum(r[key] for r in roles.values()) for key in vars(RoleUsage())}
        for usage in (*roles.values(), totals):
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            usage["cost"] = round(usage["cost"], 8)
        return {"by_role": roles, "total": totals}


class MeteredLM(dspy.LM):
    """A `dspy.LM` that reports every finished call to the job's UsageMeter."""

    def __init__(self, *args: Any, role: str, meter: UsageMeter, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.role = role
        self.meter = meter

    def update_history(self, entry: dict[str, Any]) -> None:
        super().update_history(entry)
        self.meter.record(self.role, entry)

    # A job told to stop (cancelled, out of time) sends no new LM request. (Not via
    # forward(): overriding it would switch DSPy to its legacy custom-LM path.)
    def __call__(self, *args: Any, **kwargs: Any):
        raise_if_stopped()
        return super().__call__(*args, **kwargs)

    async def acall(self, *args: Any, **kwargs: Any):
        raise_if_stopped()
        return await super().acall(*args, **kwargs)


@dataclass
class JobLMs:
    main: dspy.LM
    by_role: dict[str, dspy.LM]
    meter: UsageMeter
    secrets: list[str] = field(default_factory=list)  # api keys, to check artifacts against

    def get(self, role: str) -> dspy.LM | None:
        return self.by_role.get(role)


def _endpoint_identity(config: ModelConfig) -> tuple[str, str, str]:
    key = str(config.extra.get("api_key", ""))
    return (config.name, config.base_url or "", hashlib.sha256(key.encode()).hexdigest())


def tenant_cache_scope(spec: JobSpec) -> str:
    """A stable id of the endpoints and keys a job talks to.

    DSPy's cache key ignores api_key and api_base, so one shared disk cache would hand
    one tenant's answers to another; each scope gets its own cache directory instead.
    """
    identities = sorted({_endpoint_identity(c) for c in spec.lm_configs().values()})
    return hashlib.sha256(json.dumps(identities).encode()).hexdigest()[:32]


def configure_job_cache(spec: JobSpec) -> None:
    settings = get_settings()
    if not settings.lm_cache:
        dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
        return
    directory = settings.resolved_lm_cache_dir / tenant_cache_scope(spec)
    directory.mkdir(parents=True, exist_ok=True)
    dspy.configure_cache(enable_disk_cache=True, enable_memory_cache=True, disk_cache_dir=str(directory))


def build_lm(config: ModelConfig, *, role: str, meter: UsageMeter, cache: bool) -> MeteredLM:
    kwargs: dict[str, Any] = copy.deepcopy(config.extra)
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
            **kwargs,
        )
    except Exception as exc:  # DSPy validates model names and parameter combinations
        field_name = "model_config" if role == "main" else f"{role}_model_config"
        raise JobError(f"{field_name}: cannot build LM {config.name!r}: {exc}", field=field_name) from None


@stage("build-language-models")
def build_language_models(spec: JobSpec) -> JobLMs:
    """One metered LM per configured role, sharing a per-tenant response cache."""
    configure_job_cache(spec)
    meter = UsageMeter()
    configs = spec.lm_configs()
    # Two roles on the same model name but different endpoints or keys would share cache
    # entries (DSPy's key ignores api_base/api_key): only the first of them caches.
    seen: dict[str, tuple[str, str, str]] = {}
    by_role: dict[str, dspy.LM] = {}
    for role, config in configs.items():
        identity = _endpoint_identity(config)
        cache = seen.setdefault(config.name, identity) == identity
        by_role[role] = build_lm(config, role=role, meter=meter, cache=cache)
    secrets = [str(c.extra["api_key"]) for c in configs.values() if c.extra.get("api_key")]
    return JobLMs(main=by_role["main"], by_role=by_role, meter=meter, secrets=secrets)
