"""Issue #16's comparison in one command: ours cold, ours in the new default mode and,
with --peer DIR, the original service, through the same black-box HTTP client.

The client speaks only the documented API (shared/API_CONTRACT.md: POST /run, GET /jobs/{id},
GET /jobs), so the same code measures every target. Per target (and per --db for ours):

- overhead per job: submit -> the client sees `success` (polled every 50 ms), minus the same
  job's optimization in one plain process (bench/plain_job.py), paired by seed; BootstrapFewShot
  on 60 rows with the local LM at --delay-ms, after one warm-up job;
- throughput: --jobs small jobs (20 rows) submitted at once, 2 job slots; first submit -> the
  client sees the last one end (the job list polled every 0.25 s);
- reads: --requests sequential GET /jobs/{id} of a finished job and GET /jobs?limit=50
  (about 30 jobs stored by then).

    PYTHONPATH=. .venv/bin/python bench/compare.py --quick --db both --json bench/results/compare.json
    PYTHONPATH=. .venv/bin/python bench/compare.py --peer ~/dspy-original --modes cold,warm-start

Modes of ours are named in MODES and chosen with --modes (default: cold, then the current
default's candidate `warm-start`). --stack-env KEY=VAL
goes into our stacks' environment (A/B runs of Prefect settings). The peer is started as its
README says (`uvicorn main:app --port N` in DIR, with --peer-python, default DIR/.venv's or
ours) on its own SQLite file in a temporary directory. Failures: a job that ends other than
`success` stops the run with its id and status; a peer that does not answer /health within
120 s is stopped and its log tail raised.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchStack, payload, print_and_save, summarize  # noqa: E402
from run import SMALL_JOB, environment, log, plain_runs, timed  # noqa: E402

from tests.support.stack import free_port, start_job_lm  # noqa: E402

# Our stack's modes: BenchStack keyword arguments; a new default is one more entry (--modes).
MODES: dict[str, dict] = {"cold": {"warm_start": False}, "warm-start": {"warm_start": True}}
OPTIMIZER = "dspy.BootstrapFewShot"  # a dotted path: the original has no `bootstrap` alias
TERMINAL = {"success", "failed", "cancelled"}


class HttpTarget:
    """A black-box client of one service's documented /run and /jobs API."""

    def __init__(self, name: str, url: str, headers: dict[str, str] | None = None):
        self.name = name
        self.client = httpx.Client(base_url=url, timeout=120, headers=headers or {})

    def close(self) -> None:
        self.client.close()

    def submit(self, body: dict) -> tuple[str, float]:
        started = time.time()
        response = self.client.post("/run", json=body)
        if response.status_code not in (200, 201):
            raise RuntimeError(f"{self.name}: POST /run answered {response.status_code}: {response.text[:500]}")
        return response.json()["job_id"], started

    def status(self, job_id: str) -> str:
        response = self.client.get(f"/jobs/{job_id}")
        response.raise_for_status()
        return response.json()["status"]

    def run_to_success(self, body: dict, interval: float = 0.05, timeout: float = 600) -> tuple[str, float]:
        """Submit and poll; (job id, seconds from submit until the client saw `success`)."""
        job_id, started = self.submit(body)
        deadline = started + timeout
        while (status := self.status(job_id)) not in TERMINAL:
            if time.time() > deadline:
                raise TimeoutError(f"{self.name}: job {job_id} still {status} after {timeout:.0f} s")
            time.sleep(interval)
        seen = time.time() - started
        if status != "success":
            raise RuntimeError(f"{self.name}: job {job_id} ended {status}")
        return job_id, seen

    def statuses(self) -> dict[str, str]:
        response = self.client.get("/jobs", params={"limit": 500})
        response.raise_for_status()
        return {item["job_id"]: item["status"] for item in response.json()["items"]}


def job_body(lm, seed: int, rows: int = 60) -> dict:
    return payload(lm.url, seed=seed, optimizer=OPTIMIZER, rows=rows)


def overhead(target: HttpTarget, lm, runs: int, plain: list[dict]) -> tuple[dict, str]:
    """Per-job overhead paired by seed with the plain runs; also the last job's id."""
    target.run_to_success(job_body(lm, seed=999))  # warm-up: first imports, caches, connections
    samples, seen_all, job_id = [], [], ""
    for i in range(runs):
        job_id, seen = target.run_to_success(job_body(lm, seed=1000 + i))
        seen_all.append(seen)
        samples.append(seen - plain[i]["optimization_s"])
        log(f"  {target.name} job #{i + 1}: submit->success {seen:.2f} s, overhead {samples[-1]:.2f} s")
    return {"submit_to_success_s": summarize(seen_all), "overhead_s": summarize(samples)}, job_id


def throughput(target: HttpTarget, lm, jobs: int, timeout: float = 1800) -> dict:
    bodies = [job_body(lm, seed=2000 + i, rows=SMALL_JOB["rows"]) for i in range(jobs)]
    started = time.time()
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        ids = {job_id for job_id, _ in pool.map(target.submit, bodies)}
    submitted = time.time() - started
    while True:
        statuses = target.statuses()
        ended = {i: statuses[i] for i in ids if statuses.get(i) in TERMINAL}
        if len(ended) == len(ids):
            break
        if time.time() - started > timeout:
            raise TimeoutError(f"{target.name}: {len(ids) - len(ended)} of {jobs} jobs still running")
        time.sleep(0.25)
    elapsed = time.time() - started
    completed = sum(status == "success" for status in ended.values())
    return {
        "jobs": jobs,
        "completed": completed,
        "submit_all_s": round(submitted, 3),
        "elapsed_s": round(elapsed, 3),
        "jobs_per_min": round(jobs / elapsed * 60, 1),
    }


def measure(target: HttpTarget, lm, args, plain: list[dict]) -> dict:
    out: dict = {"target": target.name}
    log(f"  {target.name}: {args.runs} jobs one at a time")
    out["overhead"], finished = overhead(target, lm, args.runs, plain)
    log(f"  {target.name}: throughput, {args.jobs} small jobs at once")
    out["throughput"] = throughput(target, lm, args.jobs)
    log(f"  {target.name}: {out['throughput']}")
    out["stored_jobs"] = len(target.statuses())
    time.sleep(3)  # the reads start on a settled service: late logs and events of the jobs are in
    out["get_job_ms"] = timed(target.client, "GET", f"/jobs/{finished}", args.requests)
    out["list_jobs_ms"] = timed(target.client, "GET", "/jobs", args.requests, params={"limit": 50})
    return out


def ours(db: str, mode: str, lm, args, plain: list[dict]) -> dict:
    name = f"ours, {mode}" + (f" ({db})" if args.db == "both" else "")
    log(f"== {name}: starting the stack")
    bench = BenchStack(db, job_slots=2, env=args.stack_env, **MODES[mode])
    try:
        started = bench.start(progress=lambda m: log("  " + m))
        target = HttpTarget(name, bench.api_url, bench.api_headers)
        try:
            out = measure(target, lm, args, plain)
        finally:
            target.close()
    finally:
        bench.stop()
    out.update(db=db, mode=mode, stack_start_s=round(started, 2), stack_env=args.stack_env, home=str(bench.home))
    # Writes the Prefect server failed with SQLite's "database is locked" (each logged with
    # its traceback; clients retry them, PREFECT_CLIENT_RETRY_EXTRA_CODES).
    server_log = bench.home / "logs" / "prefect-server.log"
    out["server_database_locked"] = server_log.read_text(errors="replace").count("OperationalError: database is locked")
    return out


class PeerService:
    """The original service from a checkout: `uvicorn main:app --port N` in its directory,
    WORKER_CONCURRENCY=2, its SQLite job store in a temporary directory."""

    def __init__(self, directory: Path, python: str | None = None):
        self.directory = directory.resolve()
        venv_python = self.directory / ".venv" / "bin" / "python"
        self.python = python or (str(venv_python) if venv_python.exists() else sys.executable)
        self.home = Path(tempfile.mkdtemp(prefix="bench-peer-"))
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> float:
        env = {
            **os.environ,
            "LOCAL_DB_PATH": str(self.home / "dspy_jobs.db"),
            "WORKER_CONCURRENCY": "2",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "bench-not-used"),
        }
        env.pop("PYTHONPATH", None)  # the peer imports its own `main`, not ours
        command = [self.python, "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(self.port)]
        self.log_path = self.home / "peer.log"
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(command, cwd=self.directory, env=env, stdout=out, stderr=subprocess.STDOUT)
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                break
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the peer at {self.directory} did not become healthy:\n{tail}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def peer(lm, args, plain: list[dict]) -> dict:
    log(f"== original service from {args.peer}")
    service = PeerService(args.peer, args.peer_python)
    started = service.start()
    target = HttpTarget("original service", service.url)
    try:
        out = measure(target, lm, args, plain)
    finally:
        target.close()
        service.stop()
    out.update(db="its own SQLite", mode="peer", stack_start_s=round(started, 2))
    return out


# -- report ----------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    """The issue's table: a column per target, a row per measure."""
    targets = report["targets"]
    env = report["environment"]
    rows = [
        (
            "overhead per job p50 (submit→success minus the same job in-process)",
            lambda t: f"{t['overhead']['overhead_s']['p50']:.2f} s",
        ),
        (
            f"throughput, {targets[0]['throughput']['jobs']} small jobs, 2 slots",
            lambda t: f"{t['throughput']['jobs_per_min']:g} jobs/min",
        ),
        ("GET /jobs/{id} p50 / p99", lambda t: f"{t['get_job_ms']['p50']:g} / {t['get_job_ms']['p99']:g} ms"),
        ("GET /jobs?limit=50 p50 / p99", lambda t: f"{t['list_jobs_ms']['p50']:g} / {t['list_jobs_ms']['p99']:g} ms"),
        ("jobs stored during the reads", lambda t: str(t["stored_jobs"])),
    ]
    lines = [
        f"{env['date']}; {env['nproc']} CPUs, load average at start {env['loadavg_at_start'][0]:.2f}, "
        f"at end {env.get('loadavg_at_end', [0])[0]:.2f}; Prefect {env['prefect']}, DSPy {env['dspy']}; "
        f"`{env['command']}`\n",
        "| | " + " | ".join(t["target"] for t in targets) + " |",
        "|---|" + "---|" * len(targets),
    ]
    lines += [f"| {label} | " + " | ".join(cell(t) for t in targets) + " |" for label, cell in rows]
    plain = summarize([r["optimization_s"] for r in report["plain"]])
    lines.append(f"\nThe same job in one plain process: optimization p50 {plain['p50']:g} s ({plain['n']} runs).")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="sqlite")
    parser.add_argument(
        "--modes", default="cold,warm-start", help=f"ours' columns, comma list of {sorted(MODES)}; 2nd: the new default"
    )
    parser.add_argument("--peer", type=Path, default=None, help="a checkout of the original service")
    parser.add_argument("--peer-python", default=None, help="the peer's interpreter (default: DIR/.venv's, else ours)")
    parser.add_argument("--delay-ms", type=float, default=20)
    parser.add_argument("--runs", type=int, default=10, help="jobs one at a time (overhead)")
    parser.add_argument("--jobs", type=int, default=20, help="jobs submitted at once (throughput)")
    parser.add_argument("--requests", type=int, default=300, help="sequential requests per read")
    parser.add_argument("--stack-env", action="append", default=[], metavar="KEY=VAL", help="our stacks' environment")
    parser.add_argument("--quick", action="store_true", help="3 jobs one at a time, 100 requests per read")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--from-json", type=Path, default=None, help="only print the table of a recorded run")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.requests = 3, 100
    args.stack_env = dict(item.split("=", 1) for item in args.stack_env)
    args.modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown:
        parser.error(f"--modes: unknown {unknown}; known: {sorted(MODES)}")
    return args


def main() -> int:
    args = parse_args()
    if args.from_json:
        print(markdown(json.loads(args.from_json.read_text())))
        return 0
    report = {"environment": environment(), "targets": []}
    lm = start_job_lm(delay_ms=args.delay_ms)
    try:
        log("plain-process baseline")
        report["plain"] = plain_runs(lm, args.delay_ms, OPTIMIZER, args.runs)
        for db in ["sqlite", "postgres"] if args.db == "both" else [args.db]:
            for mode in args.modes:
                report["targets"].append(ours(db, mode, lm, args, report["plain"]))
        if args.peer:
            report["targets"].append(peer(lm, args, report["plain"]))
    finally:
        lm.close()
    report["environment"]["loadavg_at_end"] = os.getloadavg()
    print_and_save(report, markdown(report), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
