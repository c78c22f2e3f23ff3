"""A real stack per database: Prefect server, work pool + deployment, a worker, the API.

Runs once on SQLite and once on PostgreSQL (127.0.0.1:5432, trust auth, a fresh database
per run). The local LM runs in the test process; jobs reach it over HTTP.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from pathlib import Path

import httpx
import pytest

from deployments.stack import Stack, StackConfig
from dspy_service.settings import ServiceSettings

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _postgres_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def start_stack(stack: Stack, home: Path) -> None:
    """Start a test stack; if it does not come up, stop it and print the tails of its logs."""
    try:
        stack.start(timeout=180, progress=lambda _: None)
    except Exception:
        stack.stop()
        for log in (home / "logs").glob("*.log"):
            print(f"==== {log.name}\n{log.read_text()[-4000:]}")
        raise


class RunningStack:
    def __init__(self, stack: Stack, database: str):
        self.stack = stack
        self.database = database
        self.api = httpx.Client(base_url=stack.config.api_url, timeout=60)
        self.env = stack.env

    def wait_for_status(self, job_id: str, statuses: set[str], timeout: float = 180, seen: list | None = None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.api.get(f"/jobs/{job_id}/summary").json()
            if seen is not None and (not seen or seen[-1] != job["status"]):
                seen.append(job["status"])
            if job["status"] in statuses:
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} not in {statuses} after {timeout}s: {job}")

    def prefect_client(self):
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        class _Client:
            def __enter__(inner):
                inner.settings = temporary_settings({PREFECT_API_URL: self.stack.config.prefect_api_url})
                inner.settings.__enter__()
                inner.client = get_client(sync_client=True)
                return inner.client.__enter__()

            def __exit__(inner, *exc):
                inner.client.__exit__(*exc)
                inner.settings.__exit__(*exc)

        return _Client()


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def stack(request, tmp_path_factory, local_lm):
    database = request.param
    home: Path = tmp_path_factory.mktemp(f"stack-{database}")
    db_name = None
    database_url = None
    if database == "postgres":
        db_name = f"dspy_service_test_{uuid.uuid4().hex[:10]}"
        asyncio.run(_postgres_admin(f'CREATE DATABASE "{db_name}"'))
        database_url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db_name}"
    settings = ServiceSettings(home=home, database_url=database_url, job_slots=2, scheduler_loop_seconds=1)
    config = StackConfig(settings=settings, api_port=free_port(), prefect_port=free_port())
    stack = Stack(config)
    start_stack(stack, home)
    running = RunningStack(stack, database)
    yield running
    stack.stop()
    if db_name:
        asyncio.run(_postgres_admin(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
