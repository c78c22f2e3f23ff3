"""A real stack per database: Prefect server, work pool + deployment, a worker, the API.

Runs once on SQLite and once on PostgreSQL (127.0.0.1:5432, trust auth, a fresh database
per run); tests marked `sqlite_only` run on SQLite only. The local LM runs in the test
process; jobs reach it over HTTP.
"""

from __future__ import annotations

import pytest

from tests.support.markers import deselect_postgres_runs
from tests.support.stack import RunningStack


def pytest_collection_modifyitems(config, items):
    deselect_postgres_runs(config, items)


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def stack(request, tmp_path_factory, local_lm):
    home = tmp_path_factory.mktemp(f"stack-{request.param}")
    running = RunningStack.start(home, request.param, job_slots=2, scheduler_loop_seconds=1)
    yield running
    running.stop()
