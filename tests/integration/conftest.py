"""A real stack per database: Prefect server, work pool + deployment, a worker, the API.

Runs once on SQLite and once on PostgreSQL (127.0.0.1:5432, trust auth, a fresh database
per run); tests marked `sqlite_only` run on SQLite only. The SQLite stack starts jobs as
the service does by default (warm start: a zygote and warm sandboxes), the PostgreSQL
stack cold (COLD_START_DATABASE), so that both job start paths keep the whole contract. The local LM and a webhook
receiver run in the test process; jobs reach the LM over HTTP, and the service may POST
webhooks to the receiver (both allow-listed).
"""

from __future__ import annotations

import pytest

from tests.support.markers import deselect_postgres_runs
from tests.support.stack import COLD_START_DATABASE, RunningStack


def pytest_collection_modifyitems(config, items):
    deselect_postgres_runs(config, items)


# Package scope: a stack stops when its stream leaves tests/integration, instead of idling
# (and taking CPU) beside the tests that stream runs next (tests/support/streams.py).
@pytest.fixture(scope="package", params=["sqlite", "postgres"])
def stack(request, tmp_path_factory, local_lm, webhook_receiver):
    home = tmp_path_factory.mktemp(f"stack-{request.param}")
    warm_start = request.param != COLD_START_DATABASE
    running = RunningStack.start(home, request.param, job_slots=2, scheduler_loop_seconds=1, warm_start=warm_start)
    yield running
    running.stop()
