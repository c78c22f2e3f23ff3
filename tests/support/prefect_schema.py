"""Prefect's database, migrated once per test process, copied into each stack that asks.

A Prefect server started on an empty database first runs every one of Prefect's
migrations: about 9 s of a stack's start on a 2-core machine (measured on SQLite: server
healthy after 16-20 s on an empty database, 9-10 s on a migrated copy). A suite that
starts a dozen stacks would pay that a dozen times for the same result, so one database
per kind is migrated with Prefect's own `prefect server database upgrade`, and each stack
starts from a copy of it:

- SQLite: the migrated file, copied to the stack's `prefect.db` before its server starts;
- PostgreSQL: `CREATE DATABASE ... TEMPLATE` the migrated database.

The server still runs its migrations on start and finds nothing to do; everything after
that (block types, work pools, deployments, runs) is the stack's own, as before. The path
from an empty database stays covered: tests/integration/test_auth_off.py starts its stack
with `migrated=False`, as a fresh machine's `dspy-service up` would.

`prepare()` starts both migrations in background threads (tests/conftest.py calls it when
integration tests are collected, so they run beside the first tests); the first stack of a
kind waits for its build. How it fails: a migration's non-zero exit (or an unreachable
PostgreSQL server) is raised, with its output, to every stack that asks for that kind;
the PostgreSQL template is dropped when the process exits.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from tests.support.postgres import FreshDatabase

UPGRADE_TIMEOUT_SECONDS = 300

_builds: dict[str, Future] = {}
_lock = threading.Lock()
_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="prefect-schema")


def upgrade(database_url: str) -> None:
    """Run Prefect's migrations on `database_url` in a fresh interpreter (its own PREFECT_HOME)."""
    with tempfile.TemporaryDirectory(prefix="prefect-upgrade-") as home:
        env = {
            **os.environ,
            "PREFECT_HOME": home,
            "PREFECT_API_DATABASE_CONNECTION_URL": database_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        done = subprocess.run(
            [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
            env=env, capture_output=True, text=True, timeout=UPGRADE_TIMEOUT_SECONDS,
        )
    if done.returncode != 0:
        raise RuntimeError(f"prefect server database upgrade failed ({done.returncode}):\n{done.stdout}{done.stderr}")


def _migrated_sqlite() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="prefect-schema-"))
    atexit.register(shutil.rmtree, directory, True)
    path = directory / "prefect.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


def _migrated_postgres() -> FreshDatabase:
    # Nothing stays connected to it once the upgrade exits: CREATE DATABASE ... TEMPLATE requires that.
    template = FreshDatabase.create("prefect_schema_")
    atexit.register(template.drop)
    upgrade(template.url)
    return template


BUILDERS: dict[str, Callable[[], object]] = {"sqlite": _migrated_sqlite, "postgres": _migrated_postgres}


def _build(kind: str) -> Future:
    with _lock:
        if kind not in _builds:
            _builds[kind] = _pool.submit(BUILDERS[kind])
        return _builds[kind]


def prepare() -> None:
    """Start migrating both kinds now, in the background."""
    for kind in BUILDERS:
        _build(kind)


def copy_migrated_sqlite(target: Path) -> None:
    """Put a migrated copy of Prefect's SQLite database at `target` (a stack's prefect.db)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_build("sqlite").result(), target)


def migrated_postgres_template() -> str:
    """The name of a PostgreSQL database Prefect has migrated, to copy with TEMPLATE."""
    return _build("postgres").result().name
