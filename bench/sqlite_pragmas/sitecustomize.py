"""Bench only: extra SQLite PRAGMAs on each connection of the Prefect server, for A/B runs
of settings Prefect hard-codes (AioSqliteConfiguration.setup_sqlite sets journal_mode=WAL,
synchronous=NORMAL, cache_size=20000, busy_timeout=60000 and has no setting for them).

    BENCH_SQLITE_PRAGMAS="synchronous=OFF;busy_timeout=5000" with this directory first on
    PYTHONPATH (bench/compare.py --stack-env ...)

The PRAGMAs run after Prefect's own on every new connection. Without BENCH_SQLITE_PRAGMAS
this file does nothing; a PRAGMA SQLite rejects fails the connection (the server does not start).
"""

import importlib.abc
import importlib.util
import os
import sys

PRAGMAS = [p.strip() for p in os.environ.get("BENCH_SQLITE_PRAGMAS", "").split(";") if p.strip()]
TARGET = "prefect.server.database.configurations"


def patch(module) -> None:
    original = module.AioSqliteConfiguration.setup_sqlite

    def setup_sqlite(self, conn, record):
        original(self, conn, record)
        cursor = conn.cursor()
        for pragma in PRAGMAS:
            cursor.execute(f"PRAGMA {pragma};")
        cursor.close()

    module.AioSqliteConfiguration.setup_sqlite = setup_sqlite
    print(f"bench sqlite_pragmas: {PRAGMAS} after Prefect's own", file=sys.stderr, flush=True)


class PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if PRAGMAS:
    sys.meta_path.insert(0, PatchOnImport())
