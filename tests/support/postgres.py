"""A fresh PostgreSQL database per stack, on the local server (127.0.0.1:5432, trust auth).

`create(prefix, template=name)` copies database `name` (CREATE DATABASE ... TEMPLATE;
tests/support/prefect_schema.py keeps one Prefect has migrated). Creating one fails with
asyncpg's connection error when no server listens there; a database is dropped WITH
(FORCE), so connections a stopped stack left open do not block it.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


async def _admin(sql: str) -> None:
    import asyncpg  # only the PostgreSQL runs need the driver

    conn = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@dataclass(frozen=True)
class FreshDatabase:
    """An empty database created for one stack; `drop` removes it."""

    name: str

    @classmethod
    def create(cls, prefix: str, template: str | None = None) -> FreshDatabase:
        database = cls(f"{prefix}{uuid.uuid4().hex[:10]}")
        copied = f' TEMPLATE "{template}"' if template else ""
        asyncio.run(_admin(f'CREATE DATABASE "{database.name}"{copied}'))
        return database

    @property
    def url(self) -> str:
        """The service's `database_url` for this database."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{self.name}"

    def drop(self) -> None:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
