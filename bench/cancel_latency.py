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
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deployments.stack import Stack, StackConfig  # noqa: E402
from dspy_service.local_lm import (  # noqa: E402
    ARITHMETIC_METRIC_CODE,
    ARITHMETIC_SIGNATURE_CODE,
    make_arithmetic_dataset,
    start_local_lm,
)
from dspy_service.settings import ServiceSettings  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def payload(lm_url: str, seed: int) -> dict:
    return {
        "username": "bench-cancel",
        "module_name": "cot",
        "signature_code": ARITHMETIC_SIGNATURE_CODE,
        "metric_code": ARITHMETIC_METRIC_CODE,
        "optimizer_name": "bootstrap",
        "optimizer_kwargs": {"max_bootstrapped_demos": 4, "max_labeled_demos": 0},
        "dataset": make_arithmetic_dataset(60, seed=seed),
        "column_mapping": {"inputs": {"question": "question"}, "outputs": {"answer": "answer"}},
        "split_fractions": {"train": 0.5, "val": 0.2, "test": 0.3},
        "seed": seed,
        "model_config": {"name": "openai/local-arithmetic", "base_url": lm_url, "extra": {"api_key": f"bench-{seed}"}},
    }


def stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def gone(pid: int) -> bool:
    fields = stat_fields(pid)
    return fields is None or fields[0] in ("Z", "X")


def session_members(session_id: int) -> list[int]:
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = stat_fields(int(entry.name))
            if fields and int(fields[3]) == session_id and fields[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


def engine_pid(api: httpx.Client, job_id: str, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in api.get(f"/jobs/{job_id}/logs").json():
            match = re.search(r"\(process (\d+) on ", entry["message"])
            if match:
                return int(match.group(1))
        time.sleep(0.1)
    raise TimeoutError("the job never logged its process")


def trial(api: httpx.Client, prefect_url: str, lm, seed: int) -> dict:
    job_id = api.post("/run", json=payload(lm.url, seed)).json()["job_id"]
    engine = engine_pid(api, job_id)
    while api.get(f"/jobs/{job_id}/summary").json()["status"] != "running":
        time.sleep(0.1)
    time.sleep(1.0)
    supervisor = int(stat_fields(engine)[1])
    relay = int(stat_fields(supervisor)[1])
    tree = [relay, supervisor, *session_members(engine)]
    started = time.time()
    assert api.post(f"/jobs/{job_id}/cancel").status_code == 200
    tree_gone = cancelled = None
    while tree_gone is None or cancelled is None:
        now = time.time()
        if tree_gone is None and all(gone(pid) for pid in tree):
            tree_gone = now - started
        if cancelled is None and httpx.get(f"{prefect_url}/flow_runs/{job_id}").json()["state_type"] == "CANCELLED":
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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def summarize(values: list[float]) -> dict:
    return {
        "p50": round(statistics.median(values), 3),
        "p95": round(percentile(values, 95), 3),
        "max": round(max(values), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--delay-ms", type=float, default=200, help="local LM latency per call")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    lm = start_local_lm(delay_ms=args.delay_ms)
    home = Path(tempfile.mkdtemp(prefix="bench-cancel-"))
    config = StackConfig(
        settings=ServiceSettings(home=home, job_slots=2), api_port=free_port(), prefect_port=free_port()
    )
    stack = Stack(config)
    results = []
    try:
        stack.start(progress=lambda m: print(m, file=sys.stderr))
        with httpx.Client(base_url=config.api_url, timeout=60) as api:
            for seed in range(args.trials):
                result = trial(api, config.prefect_api_url, lm, seed)
                print(json.dumps(result), file=sys.stderr)
                results.append(result)
    finally:
        stack.stop()
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
