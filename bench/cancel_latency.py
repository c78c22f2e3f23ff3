"""Cancel latency: from POST /jobs/{id}/cancel to the job's whole process tree being gone.

Starts a private stack (Prefect server on SQLite, one worker, the API, the local LM with
a per-call delay), then, for each trial, submits a job, waits until it is optimizing,
cancels it and measures

- tree gone: the relay, the supervisor, the engine and every process in the engine's
  session have exited (what "the job stopped" means for the machine and the bill);
- cancelled: Prefect shows the run Cancelled (the API says `cancelled` from the moment
  the cancel is accepted);
- LM calls that arrived at the local LM after the cancel request.

    python bench/cancel_latency.py --trials 12 [--delay-ms 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchStack, summarize  # noqa: E402
from common import payload as job_payload  # noqa: E402

from deployments.runtime.procfs import process_gone  # noqa: E402
from dspy_service.settings import ServiceSettings  # noqa: E402
from tests.support.processes import JobProcesses, engine_pid  # noqa: E402
from tests.support.stack import start_job_lm  # noqa: E402


def payload(lm_url: str, seed: int) -> dict:
    return job_payload(lm_url, seed, optimizer="bootstrap", username="bench-cancel")


def trial(api: httpx.Client, prefect: httpx.Client, lm, seed: int) -> dict:
    job_id = api.post("/run", json=payload(lm.url, seed)).json()["job_id"]
    engine = engine_pid(api, job_id, timeout=120, interval=0.1)
    while api.get(f"/jobs/{job_id}/summary").json()["status"] != "running":
        time.sleep(0.1)
    time.sleep(1.0)
    procs = JobProcesses.of_engine(engine, job_id)
    tree = [procs.relay, procs.supervisor, *procs.job_session()]
    started = time.time()
    assert api.post(f"/jobs/{job_id}/cancel").status_code == 200
    tree_gone = cancelled = None
    while tree_gone is None or cancelled is None:
        now = time.time()
        if tree_gone is None and all(process_gone(pid) for pid in tree):
            tree_gone = now - started
        if cancelled is None and prefect.get(f"/flow_runs/{job_id}").json()["state_type"] == "CANCELLED":
            cancelled = now - started
        if now - started > 60:
            raise TimeoutError(f"trial {seed}: tree gone {tree_gone}, cancelled {cancelled}")
        time.sleep(0.01)
    time.sleep(1.0)
    late_calls = sum(1 for t in lm.stats()["call_times"] if t > started)
    return {
        "tree_gone_s": round(tree_gone, 3),
        "cancelled_s": round(cancelled, 3),
        "lm_calls_after_cancel": late_calls,
        "processes": len(tree),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--delay-ms", type=float, default=200, help="local LM latency per call")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    lm = start_job_lm(delay_ms=args.delay_ms)
    bench = BenchStack("sqlite", job_slots=2, prefix="bench-cancel-")
    results = []
    try:
        bench.start(progress=lambda m: print(m, file=sys.stderr))
        api = httpx.Client(base_url=bench.api_url, timeout=60, headers=bench.api_headers)
        with api, bench.prefect_client() as prefect:
            for seed in range(args.trials):
                result = trial(api, prefect, lm, seed)
                print(json.dumps(result), file=sys.stderr)
                results.append(result)
    finally:
        bench.stop()
        lm.close()
    report = {
        "trials": len(results),
        "lm_delay_ms": args.delay_ms,
        "grace_seconds": ServiceSettings().job_cancel_grace_seconds,
        "tree_gone_s": summarize([r["tree_gone_s"] for r in results]),
        "cancelled_state_s": summarize([r["cancelled_s"] for r in results]),
        "lm_calls_after_cancel": summarize([r["lm_calls_after_cancel"] for r in results]),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"report": report, "trials": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
