"""The stages of an optimization job, each a Prefect task. They know nothing of HTTP."""

from prefect import task
from prefect.cache_policies import NO_CACHE

import dspy_service  # noqa: F401  (offline environment defaults before dspy is imported)


def stage(name: str):
    """Decorate a job stage: one task run named exactly `name` (the API looks runs up by
    name), never cached or persisted, since stages pass live DSPy objects to each other."""
    return task(name=name, task_run_name=name, cache_policy=NO_CACHE, persist_result=False)
