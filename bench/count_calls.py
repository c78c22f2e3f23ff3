"""Issue #16 items 2-3: pickup latency and the Prefect API requests of one job.

Starts a private stack (SQLite) whose job worker reaches Prefect through a counting proxy
(tests/support/prefect_tap.py), so every request of the worker and of the job's
processes behind it (relay, supervisor, the engine through its job-scoped proxy) is
counted by method + route; the API, the notify worker and the program server talk to
Prefect directly and are not counted. Jobs run one at a time (small BootstrapFewShot on
the local LM); per job it records

- submit -> the worker's "submitting flow run" log line, submit -> Pending, submit -> Running
  (from the run's own state history and logs: server timestamps);
- the requests seen between submit and the job's end (the worker's periodic poll and
  heartbeat included: they are per second, not per job, and shown as such).

    PYTHONPATH=. .venv/bin/python bench/count_calls.py --jobs 10 [--stock-worker] [--json FILE]

`--stock-worker` runs `prefect worker start --type process` instead of deployments/worker.py
(the "before").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from datetime import datetime

import httpx
from common import BenchStack, payload, summarize

from tests.support.prefect_tap import PrefectTap
from tests.support.stack import start_job_lm

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def wait_terminal(prefect: httpx.Client, run_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = prefect.get(f"/flow_runs/{run_id}").json()
        if run["state_type"] in TERMINAL:
            return run
        time.sleep(0.2)
    raise TimeoutError(f"job {run_id} did not end in {timeout} s")


def job_timings(prefect: httpx.Client, run: dict) -> dict:
    """Seconds from the run's creation (the submit) to pickup, Pending and Running."""
    created = seconds(run["created"])
    states = prefect.get("/flow_run_states/", params={"flow_run_id": run["id"]}).json()
    first = {}
    for state in sorted(states, key=lambda s: s["timestamp"]):
        first.setdefault(state["type"], seconds(state["timestamp"]))
    logs = prefect.post(
        "/logs/filter", json={"logs": {"flow_run_id": {"any_": [run["id"]]}}, "sort": "TIMESTAMP_ASC", "limit": 200}
    ).json()
    submitting = [seconds(log["timestamp"]) for log in logs if "submitting flow run" in log["message"]]
    return {
        "to_submitting_log_s": submitting[0] - created if submitting else None,
        "to_pending_s": first["PENDING"] - created if "PENDING" in first else None,
        "to_running_s": first["RUNNING"] - created if "RUNNING" in first else None,
        "state": run["state_type"],
    }


def run_jobs(bench: BenchStack, tap: PrefectTap, lm_url: str, jobs: int) -> tuple[list[dict], list[Counter]]:
    api = httpx.Client(base_url=bench.api_url, headers=bench.api_headers, timeout=60)
    prefect = bench.prefect_client()
    rows, counts = [], []
    for seed in range(jobs + 1):  # the first job warms caches and is not counted
        time.sleep(2.5)  # idle: the previous job's last requests are done
        tap.reset()
        response = api.post("/run", json=payload(lm_url, seed=seed, rows=20))
        response.raise_for_status()
        run = wait_terminal(prefect, response.json()["job_id"])
        time.sleep(1.5)  # the worker's own requests after the process exit
        if seed == 0:
            continue
        counts.append(tap.counts())
        rows.append({**job_timings(prefect, run), "requests": sum(counts[-1].values())})
        print(f"job {seed}: {rows[-1]}", flush=True)
    return rows, counts


def report(rows: list[dict], counts: list[Counter], stock: bool) -> dict:
    routes = sorted({route for count in counts for route in count})
    per_route = {route: statistics.median(count.get(route, 0) for count in counts) for route in routes}
    return {
        "worker": "prefect worker start --type process" if stock else "python -m deployments.worker",
        "jobs": len(rows),
        "states": Counter(row["state"] for row in rows),
        "submit_to_submitting_log_s": summarize([r["to_submitting_log_s"] for r in rows if r["to_submitting_log_s"]]),
        "submit_to_pending_s": summarize([r["to_pending_s"] for r in rows if r["to_pending_s"]]),
        "submit_to_running_s": summarize([r["to_running_s"] for r in rows if r["to_running_s"]]),
        "requests_per_job": summarize([r["requests"] for r in rows], digits=1),
        "median_requests_per_route": {route: n for route, n in sorted(per_route.items(), key=lambda kv: -kv[1]) if n},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--stock-worker", action="store_true", help="Prefect's process worker (the before)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    lm = start_job_lm(delay_ms=0)
    bench = BenchStack(job_slots=2, prefix="bench-calls-")
    tap = PrefectTap(bench.config.prefect_api_url.removesuffix("/api")).start()
    worker = bench.stack.workers[0]
    worker.extra_env["PREFECT_API_URL"] = tap.url
    if args.stock_worker:
        pool = bench.config.settings.work_pool
        worker.command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process",
                          "--name", worker.command[-1]]
    try:
        bench.start()
        rows, counts = run_jobs(bench, tap, lm.url, args.jobs)
    finally:
        bench.stop()
        tap.stop()
        lm.close()
    result = report(rows, counts, args.stock_worker)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"report": result, "jobs": rows}, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
