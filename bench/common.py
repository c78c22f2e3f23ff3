"""Shared pieces of the benchmark scripts: a private stack, job payloads, percentiles.

The stack, its fresh PostgreSQL database and free ports come from the test-support
package (tests/support/), the process lookups from deployments.runtime.procfs: the
benchmarks start and inspect a stack exactly as the tests do.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from dspy_service.testing.local_lm import (  # noqa: E402
    ARITHMETIC_METRIC_CODE,
    ARITHMETIC_SIGNATURE_CODE,
    make_arithmetic_dataset,
)
from tests.support.stack import admin_headers, configure_stack, prefect_http_client, start_stack  # noqa: E402

OPTIMIZERS = {
    "bootstrap": {"max_bootstrapped_demos": 4, "max_labeled_demos": 0},
    "miprov2": {"auto": "light", "max_bootstrapped_demos": 2, "max_labeled_demos": 2},
}


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


def print_and_save(report: dict, text: str, path: Path | None) -> None:
    """Print a run's markdown; with `path`, keep the report (and the markdown) there as JSON."""
    print(text)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**report, "markdown": text}, indent=2))


# -- the stack ----------------------------------------------------------------------------


class BenchStack:
    """A private stack (Prefect server, worker(s), API) on SQLite or a fresh PostgreSQL database."""

    def __init__(
        self,
        db: str = "sqlite",
        job_slots: int = 2,
        prefix: str = "bench-",
        env: dict | None = None,
        warm_start: bool | None = None,  # None: the service's default (DSPY_SERVICE_WARM_START)
    ):
        self.db = db
        self.home = Path(tempfile.mkdtemp(prefix=prefix))
        self.warm_start = warm_start
        self.stack, self.fresh = configure_stack(
            self.home, db, env=env, warm_start=warm_start, db_prefix="bench_", job_slots=job_slots
        )
        self.config = self.stack.config

    @property
    def api_url(self) -> str:
        return self.config.api_url

    def prefect_client(self):
        """An httpx client of the stack's Prefect API, with its auth string."""
        return prefect_http_client(self.stack)

    @property
    def api_headers(self) -> dict[str, str]:
        """The first admin's Authorization header (read once the stack is up)."""
        return admin_headers(self.stack)

    def start(self, progress=print) -> float:
        """Seconds the stack took to come up; if it does not, its log tails are printed."""
        return start_stack(self.stack, timeout=120, progress=progress)

    def stop(self) -> None:
        try:
            self.stack.stop()
        finally:
            if self.fresh:
                self.fresh.drop()

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
