"""The `sqlite_only` marker: a test that does not depend on the database runs on the
SQLite stack only.

The `stack` fixture is parametrized over both databases; `deselect_postgres_runs` drops
the PostgreSQL run of every marked test at collection (reported as deselected), so the
marked tests never start a PostgreSQL stack of their own.
"""

from __future__ import annotations

import pytest

SQLITE_ONLY = "sqlite_only"
# Tests that start real Prefect server / worker / API processes (pyproject.toml lists the markers).
INTEGRATION = "integration"


def runs_on_postgres(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    return callspec is not None and callspec.params.get("stack") == "postgres"


def deselect_postgres_runs(config: pytest.Config, items: list[pytest.Item]) -> None:
    dropped = [item for item in items if item.get_closest_marker(SQLITE_ONLY) and runs_on_postgres(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        kept = set(items) - set(dropped)
        items[:] = [item for item in items if item in kept]
