"""A pre-imported process takes on a job's environment: what a fresh interpreter would see.

The zygote's forks (supervisors and engines) and warm sandboxes' engines imported Prefect,
DSPy and the flows before their job existed, under an environment without the job's
variables. `adopt_environment` makes them see the job's environment as a fresh interpreter
started with it would: os.environ, our settings, the random state, and for an engine
Prefect's settings (snapshotted at import) and Prefect's logging.

Logging is set up again only when its inputs differ by meaning (`logging_inputs`): Prefect's
`setup_logging` renders every setting into its template (~0.15 CPU-s on the 2-core bench VM,
on each job's path to Running), and the worker renders numbers its own way (the stack's
PREFECT_LOGGING_TO_API_BATCH_INTERVAL=1 reaches the job as 1.0), so comparing the raw
strings set logging up again for every job.

How it fails: a job's setting that does not parse raises in Prefect's settings refresh, as it
would at a fresh interpreter's start, and the engine exits before running the flow.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Mapping
from typing import Any

from deployments.runtime.env import apply_malloc_env

LOGGING_PREFIX = "PREFECT_LOGGING_"


def logging_inputs(environ: Mapping[str, str]) -> tuple[Any, ...] | None:
    """What Prefect's `setup_logging` builds its configuration from, compared by meaning:
    the parsed logging settings and the levels its default template names, plus the raw
    PREFECT_LOGGING_* variables that are not settings (overrides of the configuration's
    keys, used as given). None when a logging file of the user's replaces the default
    template: it may name any setting, so only a new set-up is exact."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.logging.config_path is not None and settings.logging.config_path.exists():
        return None
    setting_names = {
        *settings.logging.to_environment_variables(include_aliases=True),
        *settings.internal.to_environment_variables(include_aliases=True),
    }
    overrides = {k: v for k, v in environ.items() if k.startswith(LOGGING_PREFIX) and k not in setting_names}
    return (
        settings.logging.model_dump(mode="json"),
        settings.internal.logging_level,
        settings.server.logging_level,
        sorted(overrides.items()),
    )


# The inputs this process's logging was last set up from (by the zygote or warm sandbox
# after its imports; `remember_logging_inputs`). Forks inherit it.
_LOGGING_SET_UP_FROM: list[tuple[Any, ...] | None] = [None]


def remember_logging_inputs() -> None:
    """Call once Prefect's import has set up logging from this process's environment."""
    _LOGGING_SET_UP_FROM[0] = logging_inputs(os.environ)


def adopt_environment(env: dict[str, str], engine: bool = True) -> None:
    """Make this process see `env` as a fresh interpreter started with it would: os.environ,
    our settings and (for the engine) Prefect's settings, which Prefect snapshots at import,
    and its logging."""
    os.environ.clear()
    os.environ.update(env)
    apply_malloc_env(env)
    from dspy_service.settings import get_settings

    get_settings.cache_clear()
    # Forks share the zygote's random state: every job would draw the same numbers.
    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()
    if not engine:  # the supervisor never uses Prefect's settings
        return
    import prefect.context

    prefect.context.refresh_global_settings_context()
    inputs = logging_inputs(env)
    if inputs is None or inputs != _LOGGING_SET_UP_FROM[0]:
        from prefect.logging.configuration import setup_logging

        setup_logging(incremental=False)
        _LOGGING_SET_UP_FROM[0] = inputs
