"""A stack per database for the hostile-tenant suite, and the one campaign run on it.

`stack` here replaces tests/integration's session stack for this package: the same
SQLite and PostgreSQL runs (ids `sqlite`, `postgres`, so `-k sqlite` and the
`sqlite_only` marker work as elsewhere), started with a canary in the environment of its
processes (worker, API, Prefect server), lowered job limits so that the bombs end fast,
and the local LM allow-listed for a sandbox's egress policy. As in tests/integration, the
SQLite stack starts jobs warm (the default) and the PostgreSQL stack cold. `campaign` runs
tests/support/hostile/campaign.py once per stack; every test of the package reads it.
"""

from __future__ import annotations

from urllib.parse import urlparse

import pytest

from tests.support.hostile.campaign import CANARY_ENV, Campaign, Canaries, run_campaign
from tests.support.stack import COLD_START_DATABASE, RunningStack

JOB_MEMORY_MB = 3072
JOB_MAX_TASKS = 256


@pytest.fixture(scope="package")
def canaries() -> Canaries:
    return Canaries.fresh()


@pytest.fixture(scope="package", params=["sqlite", "postgres"])
def stack(request, tmp_path_factory, local_lm, canaries):
    lm = urlparse(local_lm.url)
    env = {
        CANARY_ENV: canaries.env,
        "DSPY_SERVICE_JOB_MEMORY_MB": str(JOB_MEMORY_MB),
        "DSPY_SERVICE_JOB_MAX_TASKS": str(JOB_MAX_TASKS),
        "DSPY_SERVICE_EGRESS_ALLOW": f"{lm.hostname}:{lm.port}",
    }
    home = tmp_path_factory.mktemp(f"stack-hostile-{request.param}")
    running = RunningStack.start(
        home, request.param, job_slots=2, env=env, warm_start=request.param != COLD_START_DATABASE
    )
    yield running
    running.stop()


@pytest.fixture(scope="package")
def campaign(stack, local_lm, canaries) -> Campaign:
    return run_campaign(stack, local_lm.url, canaries)
