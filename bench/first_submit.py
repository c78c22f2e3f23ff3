"""POST /run right after the API starts: what the first submissions of a fresh API wait for.

Each round starts a private stack (SQLite, the service's defaults) and, as soon as it is up,
either submits one job (`single`) or --burst jobs at once (`burst`), timing each POST /run
from the client. The jobs' own run is not waited for; the stack stops after the answers.
A fresh API per round is the point: a second submission to the same API pays nothing
once-only.

    PYTHONPATH=. .venv/bin/python bench/first_submit.py [--rounds 3] [--burst 10] [--json out.json]

Failures: a POST /run that is not answered 200/201 raises with its answer; a stack that does
not come up raises with its log tails (BenchStack.start).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchStack, payload, print_and_save, summarize  # noqa: E402
from run import environment, log  # noqa: E402

from tests.support.stack import start_job_lm  # noqa: E402


def timed_post(client: httpx.Client, body: dict) -> float:
    started = time.perf_counter()
    response = client.post("/run", json=body)
    if response.status_code not in (200, 201):
        raise RuntimeError(f"POST /run answered {response.status_code}: {response.text[:500]}")
    return time.perf_counter() - started


def one_round(lm_url: str, jobs: int, seed: int) -> list[float]:
    """Seconds of each of `jobs` POST /run sent at once to an API that has just started."""
    bench = BenchStack(prefix="bench-first-")
    try:
        bench.start(progress=lambda m: log("  " + m))
        with httpx.Client(base_url=bench.api_url, headers=bench.api_headers, timeout=120) as client:
            bodies = [payload(lm_url, seed=seed + i, rows=20) for i in range(jobs)]
            with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
                return list(pool.map(lambda body: timed_post(client, body), bodies))
    finally:
        bench.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="fresh stacks per case")
    parser.add_argument("--burst", type=int, default=10, help="jobs submitted at once in the burst case")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    report = {"environment": environment(), "result": {}}
    lm = start_job_lm(delay_ms=20)
    try:
        cases = {"single": 1, "burst": args.burst}
        for case, jobs in cases.items():
            seconds: list[float] = []
            for round_no in range(args.rounds):
                log(f"{case}: round {round_no + 1} of {args.rounds} ({jobs} POST /run at once)")
                seconds += one_round(lm.url, jobs, seed=100 * round_no)
            report["result"][case] = summarize(seconds)
    finally:
        lm.close()
    lines = [
        f"{report['environment']['date']}; `{report['environment']['command']}`\n",
        "| POST /run to a just-started API | n | p50 (s) | p95 | max |",
        "|---|---|---|---|---|",
    ]
    for case, stats in report["result"].items():
        lines.append(f"| {case} | {stats['n']} | {stats['p50']} | {stats['p95']} | {stats['max']} |")
    print_and_save(report, "\n".join(lines), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
