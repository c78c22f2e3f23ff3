"""Shared pieces of the benchmark scripts: a private stack, job payloads, percentiles, /proc."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from deployments.stack import Stack, StackConfig  # noqa: E402
from dspy_service.settings import ServiceSettings  # noqa: E402
from dspy_service.testing.local_lm import (  # noqa: E402
    ARITHMETIC_METRIC_CODE,
    ARITHMETIC_SIGNATURE_CODE,
    make_arithmetic_dataset,
)

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"

OPTIMIZERS = {
    "bootstrap": {"max_bootstrapped_demos": 4, "max_labeled_demos": 0},
    "miprov2": {"auto": "light", "max_bootstrapped_demos": 2, "max_labeled_demos": 2},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def payload(
    lm_url: str,
    seed: int,
    optimizer: str = "bootstrap",
    rows: int = 60,
    username: str = "bench",
    cache_key: str | None = None,
    dataset_rows: int | None = None,
) -> dict:
    """A ChainOfThought job on the local LM's arithmetic task. `cache_key` (default: fresh)
    goes into the model's api_key, which scopes the LM cache: no run gets free cache hits."""
    dataset = make_arithmetic_dataset(dataset_rows or rows, seed=seed)
    return {
        "username": username,
        "module_name": "cot",
        "signature_code": ARITHMETIC_SIGNATURE_CODE,
        "metric_code": ARITHMETIC_METRIC_CODE,
        "optimizer_name": optimizer,
        "optimizer_kwargs": dict(OPTIMIZERS.get(optimizer, OPTIMIZERS["bootstrap"])),
        "dataset": dataset,
        "column_mapping": {"inputs": {"question": "question"}, "outputs": {"answer": "answer"}},
        "split_fractions": {"train": 0.5, "val": 0.2, "test": 0.3},
        "seed": seed,
        "model_config": {
            "name": "openai/local-arithmetic",
            "base_url": lm_url,
            "extra": {"api_key": cache_key or f"bench-{uuid.uuid4().hex}"},
        },
    }


# -- statistics ---------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q% of the values at or below it."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * q // 100)))  # ceil(n*q/100)
    return ordered[int(rank) - 1]


def summarize(values: list[float], digits: int = 3) -> dict:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), digits),
        "p95": round(percentile(values, 95), digits),
        "p99": round(percentile(values, 99), digits),
        "max": round(max(values), digits),
    }


# -- the stack ----------------------------------------------------------------------------


async def _postgres_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class BenchStack:
    """A private stack (Prefect server, worker(s), API) on SQLite or a fresh PostgreSQL database."""

    def __init__(
        self,
        db: str = "sqlite",
        job_slots: int = 2,
        prefix: str = "bench-",
        env: dict | None = None,
        warm_start: bool = False,
    ):
        self.db = db
        self.home = Path(tempfile.mkdtemp(prefix=prefix))
        self.db_name = None
        database_url = None
        if db == "postgres":
            self.db_name = f"bench_{uuid.uuid4().hex[:10]}"
            asyncio.run(_postgres_admin(f'CREATE DATABASE "{self.db_name}"'))
            database_url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{self.db_name}"
        settings = ServiceSettings(home=self.home, database_url=database_url, job_slots=job_slots)
        self.warm_start = warm_start
        self.config = StackConfig(
            settings=settings, api_port=free_port(), prefect_port=free_port(), warm_start=warm_start
        )
        self.stack = Stack(self.config)
        if env:
            self.stack.env.update(env)

    @property
    def api_url(self) -> str:
        return self.config.api_url

    @property
    def prefect_url(self) -> str:
        return self.config.prefect_api_url

    def start(self, progress=print) -> float:
        return self.stack.start(progress=progress)

    def stop(self) -> None:
        try:
            self.stack.stop()
        finally:
            if self.db_name:
                asyncio.run(_postgres_admin(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)'))

    def pids(self) -> dict[str, int]:
        s = self.stack
        pids = {
            "prefect_server": s.server.process.pid,
            "worker": s.workers[0].process.pid,
            "api": s.api.process.pid,
        }
        if s.zygotes:
            pids["zygote"] = s.zygotes[0].process.pid
        return pids

    def __enter__(self) -> BenchStack:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# -- /proc --------------------------------------------------------------------------------


def stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state is [0], ppid [1], session [3])."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def gone(pid: int) -> bool:
    fields = stat_fields(pid)
    return fields is None or fields[0] in ("Z", "X")


def all_pids() -> list[int]:
    return [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()]


def session_members(session_id: int) -> list[int]:
    members = []
    for pid in all_pids():
        fields = stat_fields(pid)
        if fields and int(fields[3]) == session_id and fields[0] not in ("Z", "X"):
            members.append(pid)
    return members


def children(pid: int) -> list[int]:
    found = []
    for other in all_pids():
        fields = stat_fields(other)
        if fields and int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            found.append(other)
    return found


def descendants(pid: int) -> list[int]:
    table = {}
    for other in all_pids():
        fields = stat_fields(other)
        if fields and fields[0] not in ("Z", "X"):
            table.setdefault(int(fields[1]), []).append(other)
    out, todo = [], [pid]
    while todo:
        for child in table.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _proc_mb(pid: int, file: str, field: str) -> float | None:
    """A `field:  N kB` line of /proc/<pid>/<file>, in MB."""
    try:
        with open(f"/proc/{pid}/{file}") as lines:
            for line in lines:
                if line.startswith(field):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def rss_mb(pid: int) -> float | None:
    return _proc_mb(pid, "status", "VmRSS:")


def pss_mb(pid: int) -> float | None:
    """Proportional set size: shared pages (a zygote's, after fork) count split among their users."""
    return _proc_mb(pid, "smaps_rollup", "Pss:")


def wait_for(check, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not met within {timeout:.0f} s")
