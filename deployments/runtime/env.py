"""What a job process may see of its worker's environment (stdlib only: the relay imports it).

The supervisor (supervisor.py) starts the engine with `engine_environment`; in warm start
the relay (relay.py) scrubs before it sends its environment to the zygote, so a worker's
secrets never enter the memory that job processes are forked from. Nothing here fails: a
name that matches no allowed pattern is dropped.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Mapping

from deployments.runtime.protocol import SOCKET_ENV

PASSTHROUGH_ENV = "DSPY_SERVICE_JOB_ENV_PASSTHROUGH"

# What a job process may see of the worker's environment. Everything else, provider keys
# (OPENAI_API_KEY, AWS_*, ...) included, is dropped. PREFECT_* carries the API URL and key
# and the run's control settings, which the engine needs; DSPY_SERVICE_* the service
# settings. Operators can add names with DSPY_SERVICE_JOB_ENV_PASSTHROUGH.
ALLOWED_ENV = (
    "PREFECT_*",
    "DSPY_SERVICE_*",
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "PYTHONUNBUFFERED",
    "PYTHONHASHSEED",
    "PYTHONIOENCODING",
    "VIRTUAL_ENV",
    "LITELLM_LOCAL_MODEL_COST_MAP",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
)


# Set for every job's engine (the work pool's template fixes the job's environment to the
# worker's own: deployments/job_template.py).
JOB_ENV = {"PYTHONUNBUFFERED": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}


def allowed_env_patterns(passthrough: str = "") -> list[str]:
    return [*ALLOWED_ENV, *(p.strip() for p in passthrough.split(",") if p.strip())]


def scrub_environment(environ: Mapping[str, str], passthrough: str = "") -> dict[str, str]:
    patterns = allowed_env_patterns(passthrough)
    return {k: v for k, v in environ.items() if any(fnmatch.fnmatchcase(k, p) for p in patterns)}


def scrub_own_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` scrubbed with the operator's passthrough list it carries."""
    return scrub_environment(environ, environ.get(PASSTHROUGH_ENV, ""))


def engine_environment(environ: Mapping[str, str], passthrough: str = "") -> dict[str, str]:
    """The environment the job's engine runs with: scrubbed, without the zygote's socket
    (user code has no business with it), with a bounded number of malloc arenas."""
    env = scrub_environment(environ, passthrough)
    env.pop(SOCKET_ENV, None)
    # glibc reserves up to 8 x cores malloc arenas of 64 MB address space each; on a
    # big host that alone would hit the address-space limit (RLIMIT_AS).
    env.setdefault("MALLOC_ARENA_MAX", "4")
    # Whatever the worker's environment says: output reaches the job's log line by line,
    # and LiteLLM never fetches its model cost map from the internet.
    env.update(JOB_ENV)
    return env


M_ARENA_MAX = -8  # glibc mallopt parameter


def apply_malloc_env(env: dict[str, str]) -> None:
    """glibc reads MALLOC_ARENA_MAX once, at process start (here: the zygote's); a forked
    engine gets the job's value through mallopt. Without it every DSPy thread may map a
    64 MB arena, and the job hits its address-space limit (RLIMIT_AS) with 'can't start
    new thread'."""
    value = env.get("MALLOC_ARENA_MAX")
    if not value or not value.isdigit():
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, int(value))
