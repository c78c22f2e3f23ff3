"""Where a job's LM responses are cached: one disk cache directory per tenant scope.

DSPy's cache key ignores api_key and api_base, so one shared disk cache would hand one
tenant's answers to another; each scope (the endpoints and resolved keys a job talks to)
gets its own directory instead. DSPy's cache holds pickles: a scope's directory is only
ever opened by jobs of that scope (an unsandboxed engine's DSPy disk cache), or by the
supervisor of a sandboxed job of that scope, which serves it to that job alone as opaque
bytes (deployments/runtime/lm_cache_server.py; never mounted into a sandbox). Pure apart
from `tenant_cache_dir`, which creates the directory (OSError propagates).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from dspy_service.schemas import JobSpec, ModelConfig
from dspy_service.secrets import looks_secret
from dspy_service.settings import ServiceSettings


def endpoint_identity(config: ModelConfig) -> tuple[str, str, str]:
    """A model config's name, endpoint and a digest of its (resolved) secrets."""
    secrets = {key: value for key, value in config.extra.items() if looks_secret(key, value)}
    digest = hashlib.sha256(json.dumps(secrets, sort_keys=True, default=str).encode()).hexdigest()
    return (config.name, config.base_url or "", digest)


def tenant_cache_scope(spec: JobSpec) -> str:
    """A stable id of the endpoints and keys (api keys, headers: the resolved secrets) a job
    talks to."""
    identities = sorted({endpoint_identity(c) for c in spec.lm_configs().values()})
    return hashlib.sha256(json.dumps(identities).encode()).hexdigest()[:32]


def tenant_cache_dir(spec: JobSpec, settings: ServiceSettings) -> Path | None:
    """The job's cache directory (created), for a spec with resolved secrets; None when
    LM caching is off."""
    if not settings.lm_cache:
        return None
    directory = settings.resolved_lm_cache_dir / tenant_cache_scope(spec)
    directory.mkdir(parents=True, exist_ok=True)
    return directory
