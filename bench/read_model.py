"""Issue #16 item 4: API read latency with many jobs stored (default 10,000).

Starts a private stack (SQLite or a fresh PostgreSQL database; the pool paused, so no job
runs), submits one job through the API and cancels it, then stores --jobs copies of its
flow run straight through the Prefect API (same deployment, parameters, tags and labels;
state Cancelled), half owned by `bench` and half by `other`. Then, sequentially,
--requests times each: GET /jobs/{id} and /jobs/{id}/summary of a stored job, GET
/jobs?limit=50 (the admin: everyone's) and GET /jobs?limit=50&username=bench; --spaced
times the last one 1.2 s apart (a page the API no longer keeps: it reads Prefect); then the
Prefect requests behind them, straight at Prefect (which part is Prefect's own work).
Before timing, it waits until the Prefect server's processes use under 15 % of a core over
5 s (its services work through the creations' events for a while, on PostgreSQL minutes
after the parallel stores); `--no-settle` times at once, as runs before 2026-12-06 08:00 did.

    PYTHONPATH=. .venv/bin/python bench/read_model.py --jobs 10000 --json bench/results/read-model.json
    DSPY_SERVICE_READ_MODEL_SIZE=0 PYTHONPATH=. .venv/bin/python bench/read_model.py ...  # read model off

Nearest-rank percentiles, milliseconds, client side (httpx on the same machine).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sql_copies  # noqa: E402
from common import BenchStack, payload, summarize  # noqa: E402

from deployments.runtime import procfs  # noqa: E402
from tests.support.stack import start_job_lm  # noqa: E402

OWNERS = ("bench", "other")
SPACING_S = 1.2  # --spaced requests: over the read model's max age (1 s), so each reads Prefect
QUIET_CPU_SHARE = 0.15  # the Prefect server idle enough to time reads (unless --no-settle)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def store_copies(prefect: httpx.Client, template: dict, count: int, threads: int) -> float:
    """`count` Cancelled copies of `template` (a flow run's JSON); seconds it took. SQLite
    answers parallel writes with 503: one thread there."""

    def create(i: int) -> None:
        body = {
            **sql_copies.copy_of(template, i, OWNERS),
            "labels": template.get("labels") or {},
            "state": {"type": "CANCELLED", "name": "Cancelled", "message": "a stored copy"},
        }
        response = prefect.post(f"/deployments/{template['deployment_id']}/create_flow_run", json=body)
        response.raise_for_status()

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for done, _ in enumerate(pool.map(create, range(count)), 1):
            if done % 1000 == 0:
                log(f"  stored {done}/{count}")
    return time.perf_counter() - started


def wait_until_quiet(pid: int, share: float = QUIET_CPU_SHARE, window: float = 5.0, timeout: float = 900.0) -> float:
    """Seconds until the process tree of `pid` (the Prefect server) used under `share` of one
    core over a `window`: after a burst of creations its services still work through their
    events, which would be timed as read latency. Gives up (and says so) after `timeout`."""

    def cpu() -> float:
        readings = (procfs.cpu_times(p) for p in [pid, *procfs.descendants_of(pid)])
        return sum(r.own for r in readings if r is not None)

    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        before = cpu()
        time.sleep(window)
        used = (cpu() - before) / window
        if used < share:
            return time.perf_counter() - started
        log(f"  Prefect server busy ({used:.0%} of a core over {window:.0f} s); waiting")
    log(f"  Prefect server still busy after {timeout:.0f} s; timing anyway")
    return time.perf_counter() - started


def until_list_index_serves(api: httpx.Client, timeout: float = 600.0, in_a_row: int = 5, under_ms: float = 10.0):
    """Seconds from the first GET /jobs until the API's list index serves pages (GET /queue
    says so: api/run_index.py), asking for a page every 0.2 s meanwhile (pages asked for
    keep it current). An API without one (before it was built): until `in_a_row` pages in
    a row took under `under_ms` (its page cache). None if neither within `timeout`."""
    started = time.perf_counter()
    fast = 0
    while time.perf_counter() - started < timeout:
        t0 = time.perf_counter()
        api.get("/jobs", params={"limit": 50, "username": "bench"}).raise_for_status()
        fast = fast + 1 if (time.perf_counter() - t0) * 1000 < under_ms else 0
        index = api.get("/queue").json().get("list_index")
        if (index["serving"] if index is not None else fast >= in_a_row):
            return round(time.perf_counter() - started, 2)
        time.sleep(0.2)
    return None


def timed(api: httpx.Client, url: str, n: int, spacing: float = 0.0, **kwargs) -> dict:
    samples = []
    for _ in range(n):
        time.sleep(spacing)
        started = time.perf_counter()
        response = api.get(url, **kwargs)
        samples.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return summarize(samples, 1)


def timed_prefect(prefect: httpx.Client, method: str, path: str, n: int, **kwargs) -> dict:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        response = prefect.request(method, path, **kwargs)
        samples.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return summarize(samples, 1)


def prefect_share(prefect: httpx.Client, deployment_ids: list[str], job_id: str, n: int) -> dict:
    """What the API asks Prefect for these reads, timed straight at Prefect: a job's run
    (GET /jobs/{id} on a miss) and the two requests of a GET /jobs?limit=50&username=bench
    page (api/gateway.py `list`: the page and its total, in parallel)."""
    where = {
        "flow_runs": {"tags": {"all_": ["user:bench"]}},
        "deployments": {"id": {"any_": deployment_ids}},
    }
    page = {**where, "sort": "EXPECTED_START_TIME_DESC", "limit": 50, "offset": 0}
    return {
        "GET /flow_runs/{id}": timed_prefect(prefect, "GET", f"/flow_runs/{job_id}", n),
        "POST /flow_runs/filter (limit 50, user tag)": timed_prefect(
            prefect, "POST", "/flow_runs/filter", n, json=page
        ),
        "POST /flow_runs/count (user tag)": timed_prefect(prefect, "POST", "/flow_runs/count", n, json=where),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--spaced", type=int, default=30, help=f"list requests {SPACING_S} s apart")
    parser.add_argument(
        "--no-settle", dest="settle", action="store_false",
        help="time the reads right after storing, without waiting for the Prefect server to go quiet",
    )
    parser.add_argument(
        "--store", choices=["api", "sql"], default="api",
        help="store the copies through the Prefect API (default) or straight in its database (bench/sql_copies.py)",
    )
    parser.add_argument("--json")
    args = parser.parse_args()
    report: dict = {
        "command": " ".join(sys.argv),
        "db": args.db,
        "read_model_size": os.environ.get("DSPY_SERVICE_READ_MODEL_SIZE", "default"),
        "loadavg_at_start": os.getloadavg(),
    }
    lm = start_job_lm()
    bench = BenchStack(args.db)
    try:
        log(f"== {args.db}: starting the stack")
        bench.start(progress=lambda m: log("  " + m))
        api = httpx.Client(base_url=bench.api_url, timeout=120, headers=bench.api_headers)
        prefect = bench.prefect_client()
        pool = bench.config.settings.work_pool
        prefect.patch(f"/work_pools/{pool}", json={"is_paused": True}).raise_for_status()
        job_id = api.post("/run", json=payload(lm.url, seed=1)).raise_for_status().json()["job_id"]
        api.post(f"/jobs/{job_id}/cancel").raise_for_status()
        template = prefect.get(f"/flow_runs/{job_id}").raise_for_status().json()
        log(f"  storing {args.jobs} jobs")
        if args.store == "sql":
            started = time.perf_counter()
            sql_copies.store(bench.config.settings.resolved_database_url, template, args.jobs, OWNERS, log)
            report["store_s"] = round(time.perf_counter() - started, 1)
        else:
            report["store_s"] = round(store_copies(prefect, template, args.jobs, 1 if args.db == "sqlite" else 4), 1)
        report["store"] = args.store
        total = api.get("/jobs", params={"limit": 1}).json()["total"]
        report["jobs_stored"] = total
        if args.settle:
            report["settle_s"] = round(wait_until_quiet(bench.stack.server.process.pid), 1)
        api_pid = bench.stack.api.process.pid
        report["api_rss_mb_before_pages"] = procfs.memory_mb(api_pid)
        report["list_index_ready_s"] = until_list_index_serves(api)
        report["api_rss_mb_after_pages"] = procfs.memory_mb(api_pid)
        log(f"  {total} jobs stored (pages fast after {report['list_index_ready_s']} s); timing {args.requests} each")
        stored = api.get("/jobs", params={"limit": 1, "offset": total // 2}).json()["items"][0]["job_id"]
        report["ms"] = {
            "GET /jobs/{id}": timed(api, f"/jobs/{stored}", args.requests),
            "GET /jobs/{id}/summary": timed(api, f"/jobs/{stored}/summary", args.requests),
            "GET /jobs?limit=50 (admin: all)": timed(api, "/jobs", args.requests, params={"limit": 50}),
            "GET /jobs?limit=50&username=bench": timed(
                api, "/jobs", args.requests, params={"limit": 50, "username": "bench"}
            ),
            "GET /jobs?limit=50&offset=2500&username=bench": timed(
                api, "/jobs", args.requests, params={"limit": 50, "offset": min(2500, total // 4), "username": "bench"}
            ),
            # A page the API last read over its max age ago (1 s): what a dashboard polling
            # every few seconds waits on (api/page_cache.py).
            f"GET /jobs?limit=50&username=bench, {SPACING_S} s apart": timed(
                api, "/jobs", args.spaced, SPACING_S, params={"limit": 50, "username": "bench"}
            ),
        }
        deployment_ids = [
            prefect.get(f"/deployments/name/{name}").raise_for_status().json()["id"]
            for name in bench.config.settings.job_deployment_names
        ]
        report["prefect_ms"] = prefect_share(prefect, deployment_ids, stored, args.requests)
        api.close()
        prefect.close()
    finally:
        bench.stop()
        lm.close()
    report["loadavg_at_end"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
