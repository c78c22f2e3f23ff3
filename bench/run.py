"""What the service costs on top of the optimization itself (issue #7), in one command.

Starts a private stack per database (Prefect server, one worker with 2 job slots, the API;
the project's local LM in this process with a fixed per-call delay) and measures

1. per-job overhead: submit -> terminal through the HTTP API, against the same
   optimization run in one plain Python process (bench/plain_job.py), BootstrapFewShot
   and MIPROv2 light, at each --delay-ms;
2. submit -> first line of the flow (worker pickup + process start + engine setup);
3. throughput: --throughput-jobs small jobs submitted at once, 2 job slots;
4. API latency: GET /jobs/{id} (finished job with logs), GET /jobs?limit=50 with
   --stored-jobs jobs stored (1,000-row datasets) and again after --big-jobs 5,000-row
   jobs, POST /run with 1,000 rows;
5. cancel -> job process tree gone, LM calls after the cancel (bench/cancel_latency.py);
6. memory (RSS) of the Prefect server, worker, API and job processes, idle and with 2 jobs running;
7. all of it on SQLite and/or PostgreSQL (127.0.0.1:5432, a fresh database per run).

    PYTHONPATH=. .venv/bin/python bench/run.py --db both --delay-ms 20,300 --json bench/results/run.json
    PYTHONPATH=. .venv/bin/python bench/run.py --quick          # smoke run, ~3 min

Percentiles are nearest-rank (p95 of 5 runs is the worst run).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, BenchStack, payload, summarize  # noqa: E402

from deployments.runtime.procfs import children_of, descendants_of, memory_mb  # noqa: E402
from tests.support.polling import wait_until  # noqa: E402
from tests.support.stack import start_job_lm  # noqa: E402

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
SMALL_JOB = {"optimizer": "bootstrap", "rows": 20}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ts(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# -- 1. the plain-process baseline ----------------------------------------------------------


def plain_runs(lm, delay_ms: float, optimizer: str, runs: int, rows: int = 60) -> list[dict]:
    lm.set_delay(delay_ms)
    out = []
    home = tempfile.mkdtemp(prefix="bench-plain-")
    env = {**os.environ, "DSPY_SERVICE_HOME": home, "PYTHONPATH": str(ROOT)}
    for i in range(runs):
        spec = payload(lm.url, seed=1000 + i, optimizer=optimizer, rows=rows)
        path = Path(home) / f"payload-{i}.json"
        path.write_text(json.dumps(spec))
        started = time.time()
        proc = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "plain_job.py"), str(path)], env=env, capture_output=True, text=True
        )
        wall = time.time() - started
        if proc.returncode:
            raise RuntimeError(f"plain job failed:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["wall_s"] = round(wall, 3)
        out.append(result)
        log(
            f"  plain {optimizer} @{delay_ms:g} ms #{i + 1}: optimization {result['optimization_s']} s, "
            f"process {wall:.2f} s"
        )
    return out


# -- 1 + 2. service jobs -------------------------------------------------------------------


class Probe:
    def __init__(self, bench: BenchStack):
        self.bench = bench
        self.api = httpx.Client(base_url=bench.api_url, timeout=120, headers=bench.api_headers)
        self.prefect = bench.prefect_client()

    def close(self) -> None:
        self.api.close()
        self.prefect.close()

    def submit(self, body: dict) -> tuple[str, float]:
        started = time.time()
        response = self.api.post("/run", json=body)
        response.raise_for_status()
        return response.json()["job_id"], started

    def wait_terminal(self, job_id: str, timeout: float = 900, interval: float = 0.05) -> dict:
        def ended() -> dict | None:
            run = self.prefect.get(f"/flow_runs/{job_id}").json()
            return run if run.get("state_type") in TERMINAL else None

        return wait_until(ended, timeout, interval, what=f"job {job_id} to end")

    def timeline(self, job_id: str, submitted: float) -> dict:
        states = self.prefect.get("/flow_run_states/", params={"flow_run_id": job_id}).json()
        by_type = {}
        for state in sorted(states, key=lambda s: s["timestamp"]):
            by_type.setdefault(state["type"], ts(state["timestamp"]))
        logs = self.prefect.post(
            "/logs/filter",
            json={"logs": {"flow_run_id": {"any_": [job_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200},
        ).json()
        first_line = next((ts(entry["timestamp"]) for entry in logs if entry["message"].startswith("job: ")), None)
        terminal = next((by_type[t] for t in TERMINAL if t in by_type), None)
        row = {
            "state": next((t for t in TERMINAL if t in by_type), None),
            "total_s": terminal - submitted if terminal else None,
            "pickup_s": by_type["PENDING"] - submitted if "PENDING" in by_type else None,
            "to_running_s": by_type["RUNNING"] - submitted if "RUNNING" in by_type else None,
            "to_first_line_s": first_line - submitted if first_line else None,
        }
        if "PENDING" in by_type and "RUNNING" in by_type:
            row["pending_to_running_s"] = by_type["RUNNING"] - by_type["PENDING"]
        if first_line and "RUNNING" in by_type:
            row["running_to_first_line_s"] = first_line - by_type["RUNNING"]
        exited = self.process_exit(job_id, submitted)
        if exited and terminal:
            row["terminal_to_exit_s"] = exited - terminal  # the worker's slot is taken until then
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}

    def process_exit(self, job_id: str, submitted: float, wait: float = 5.0) -> float | None:
        """When the worker saw the job's process exit (its `executed-flow-run` event), or None."""
        since = dt.datetime.fromtimestamp(submitted - 5, dt.UTC).isoformat()
        body = {
            "filter": {
                "occurred": {"since": since},
                "event": {"name": ["prefect.worker.executed-flow-run"]},
                "any_resource": {"id": [f"prefect.flow-run.{job_id}"]},
            },
            "limit": 5,
        }
        deadline = time.time() + wait
        while True:
            events = (self.prefect.post("/events/filter", json=body).json() or {}).get("events") or []
            if events:
                return ts(events[0]["occurred"])
            if time.time() > deadline:
                return None
            time.sleep(0.2)

    def run_job(self, body: dict) -> dict:
        job_id, submitted = self.submit(body)
        self.wait_terminal(job_id)
        observed = time.time() - submitted
        row = self.timeline(job_id, submitted)
        row["observed_s"] = round(observed, 3)
        detail = self.api.get(f"/jobs/{job_id}").json()
        result = detail.get("result") or {}
        row["job_id"] = job_id
        row["runtime_s"] = result.get("runtime_seconds")  # run_job's own time inside the flow
        if row["runtime_s"] is not None and row["to_first_line_s"] is not None:
            row["after_work_s"] = round(row["total_s"] - row["to_first_line_s"] - row["runtime_s"], 3)
        return row


def service_runs(probe: Probe, lm, delay_ms: float, optimizer: str, runs: int) -> list[dict]:
    lm.set_delay(delay_ms)
    out = []
    for i in range(runs):
        row = probe.run_job(payload(lm.url, seed=1000 + i, optimizer=optimizer))
        if row["state"] != "COMPLETED":
            raise RuntimeError(f"job {row['job_id']} ended {row['state']}")
        out.append(row)
        log(
            f"  service {optimizer} @{delay_ms:g} ms #{i + 1}: submit->terminal {row['total_s']} s "
            f"(first line {row['to_first_line_s']} s, work {row['runtime_s']} s)"
        )
    return out


# -- 3 + 6. throughput and memory -------------------------------------------------------------


class MemorySampler(threading.Thread):
    """Samples RSS of the stack's processes and of each job's relay/supervisor/engine tree."""

    def __init__(self, bench: BenchStack, interval: float = 0.25):
        super().__init__(daemon=True)
        self.pids = bench.pids()
        self.interval = interval
        self.stop_event = threading.Event()
        self.peak: dict[str, float] = {}
        self.two_jobs: dict[str, float] = {}

    def sample(self) -> dict[str, float]:
        values = {name: memory_mb(pid, "rss") or 0.0 for name, pid in self.pids.items()}
        if "zygote" in self.pids:
            values["zygote PSS"] = memory_mb(self.pids["zygote"], "pss") or 0.0
        relays = children_of(self.pids["worker"])
        # Cold: worker -> relay -> supervisor -> engine. Warm: worker -> relay, and
        # zygote -> supervisor -> engine.
        if "zygote" in self.pids:
            supervisors = children_of(self.pids["zygote"])
        else:
            supervisors = [sup for relay in relays for sup in children_of(relay)]
        engines = 0
        job: dict[str, float] = {}
        for relay in relays:
            job["job relay"] = max(job.get("job relay", 0.0), memory_mb(relay, "rss") or 0.0)
        for supervisor in supervisors:
            job["job supervisor"] = max(job.get("job supervisor", 0.0), memory_mb(supervisor, "rss") or 0.0)
            job["job supervisor PSS"] = max(job.get("job supervisor PSS", 0.0), memory_mb(supervisor, "pss") or 0.0)
            for engine in children_of(supervisor):
                engines += 1
                tree = [engine, *descendants_of(engine)]
                for key, value in (
                    ("job engine", memory_mb(engine, "rss") or 0.0),
                    ("job engine PSS", memory_mb(engine, "pss") or 0.0),
                    ("job engine + its children", sum(memory_mb(p, "rss") or 0.0 for p in tree)),
                ):
                    job[key] = max(job.get(key, 0.0), value)
        for key, value in job.items():
            values[key] = max(values.get(key, 0.0), value)
        values["engines_running"] = engines
        return values

    def run(self) -> None:
        while not self.stop_event.is_set():
            values = self.sample()
            for key, value in values.items():
                self.peak[key] = max(self.peak.get(key, 0.0), value)
                if values["engines_running"] >= 2:
                    self.two_jobs[key] = max(self.two_jobs.get(key, 0.0), value)
            time.sleep(self.interval)

    def stop(self) -> None:
        self.stop_event.set()
        self.join()


def throughput(probe: Probe, lm, jobs: int, delay_ms: float) -> tuple[dict, dict]:
    lm.set_delay(delay_ms)
    bodies = [payload(lm.url, seed=2000 + i, **SMALL_JOB) for i in range(jobs)]
    sampler = MemorySampler(probe.bench)
    sampler.start()
    started = time.time()
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        submitted = list(pool.map(probe.submit, bodies))
    submit_s = time.time() - started
    runs = [probe.wait_terminal(job_id, interval=0.2) for job_id, _ in submitted]
    sampler.stop()
    ends = []
    for job_id, t0 in submitted:
        row = probe.timeline(job_id, t0)
        ends.append(row["total_s"] + t0)
    states = [run["state_type"] for run in runs]
    elapsed = max(ends) - started
    report = {
        "jobs": jobs,
        "completed": states.count("COMPLETED"),
        "submit_all_s": round(submit_s, 3),
        "elapsed_s": round(elapsed, 3),
        "jobs_per_min": round(jobs / elapsed * 60, 1),
    }
    memory = {"peak": sampler.peak, "two_jobs_running": sampler.two_jobs}
    return report, memory


# -- 4. API latency --------------------------------------------------------------------------


PROFILE: dict = {"loops": 0}  # --profile: also "dir": Path, "pids": {"api": pid, "prefect_server": pid}


class Profiler:
    """py-spy (raw collapsed stacks) on the API and the Prefect server while a loop runs."""

    def __init__(self, name: str):
        self.procs = []
        if "dir" not in PROFILE:
            return
        PROFILE["loops"] += 1
        slug = f"{PROFILE['loops']:02d}-" + "".join(c if c.isalnum() else "-" for c in name).strip("-")
        for role, pid in PROFILE["pids"].items():
            out = PROFILE["dir"] / f"{slug}.{role}.txt"
            cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--format", "raw"]
            cmd += ["--rate", "200", "--nonblocking", "-o", str(out)]
            self.procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.0)  # let py-spy attach

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(2)  # SIGINT: py-spy writes its output and exits
        for proc in self.procs:
            proc.wait(timeout=60)


def timed(client: httpx.Client, method: str, url: str, n: int, **kwargs) -> dict:
    profiler = Profiler(f"{method} {url} {kwargs.get('params', '')} {n}")
    samples = []
    try:
        for _ in range(n):
            started = time.perf_counter()
            response = client.request(method, url, **kwargs)
            samples.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
    finally:
        profiler.stop()
    return summarize(samples, 1)


def store_jobs(probe: Probe, lm, count: int, rows: int, seed: int) -> dict:
    body = payload(lm.url, seed=seed, rows=rows)
    samples = []
    for i in range(count):
        body["seed"] = seed + i
        body["model_config"]["extra"]["api_key"] = f"bench-store-{seed + i}"
        started = time.perf_counter()
        response = probe.api.post("/run", json=body)
        samples.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
        # Stored jobs are finished jobs: a Scheduled one would keep the server busy
        # marking it Late, which no real store of 1,000 jobs does.
        probe.api.post(f"/jobs/{response.json()['job_id']}/cancel").raise_for_status()
        if (i + 1) % 200 == 0:
            log(f"  stored {i + 1}/{count} jobs of {rows} rows")
    return summarize(samples, 1)


def api_latency(probe: Probe, lm, finished_job: str, stored: int, big: int, requests: int) -> dict:
    pool = probe.bench.config.settings.work_pool
    for delay in (0.1, 0.3, 1.0, 3.0, None):  # SQLite answers a racing write with 503
        response = probe.prefect.patch(f"/work_pools/{pool}", json={"is_paused": True})
        if response.status_code != 503 or delay is None:
            response.raise_for_status()
            break
        time.sleep(delay)
    out = {}
    detail = probe.api.get(f"/jobs/{finished_job}").json()
    out["finished_job_logs"] = len(detail["logs"])
    total = probe.api.get("/jobs", params={"limit": 1}).json()["total"]
    log(f"  API latency with {total} jobs stored")
    out[f"GET /jobs/{{id}} ({total} jobs)"] = timed(probe.api, "GET", f"/jobs/{finished_job}", requests)
    out[f"GET /jobs?limit=50 ({total} jobs)"] = timed(probe.api, "GET", "/jobs", requests, params={"limit": 50})
    out["POST /run (1,000 rows)"] = store_jobs(probe, lm, stored, rows=1000, seed=10_000)
    total = probe.api.get("/jobs", params={"limit": 1}).json()["total"]
    out[f"GET /jobs?limit=50 ({total} jobs, newest 1,000-row)"] = timed(
        probe.api, "GET", "/jobs", requests, params={"limit": 50}
    )
    out["POST /run (5,000 rows)"] = store_jobs(probe, lm, big, rows=5000, seed=20_000)
    total = probe.api.get("/jobs", params={"limit": 1}).json()["total"]
    log(f"  API latency with {total} jobs stored")
    out[f"GET /jobs?limit=50 ({total} jobs, newest 5,000-row)"] = timed(
        probe.api, "GET", "/jobs", requests, params={"limit": 50}
    )
    out[f"GET /jobs/{{id}} ({total} jobs)"] = timed(probe.api, "GET", f"/jobs/{finished_job}", requests)
    return out


# -- 5. cancel -------------------------------------------------------------------------------


def cancel(probe: Probe, lm, trials: int, delay_ms: float = 200) -> dict:
    import cancel_latency

    lm.set_delay(delay_ms)
    results = []
    for seed in range(trials):
        results.append(cancel_latency.trial(probe.api, probe.prefect, lm, seed))
        log(f"  cancel #{seed + 1}: {results[-1]}")
    return {
        "trials": trials,
        "lm_delay_ms": delay_ms,
        "tree_gone_s": summarize([r["tree_gone_s"] for r in results]),
        "cancelled_state_s": summarize([r["cancelled_s"] for r in results]),
        "lm_calls_after_cancel": summarize([r["lm_calls_after_cancel"] for r in results]),
    }


# -- one database ----------------------------------------------------------------------------


def bench_database(db: str, lm, args, plain: dict, warm_start: bool = False) -> dict:
    label = f"{db} warm" if warm_start else db
    log(f"== {label}: starting the stack")
    bench = BenchStack(db, job_slots=2, warm_start=warm_start)
    out: dict = {"db": label, "warm_start": warm_start}
    try:
        out["stack_start_s"] = round(bench.start(progress=lambda m: log("  " + m)), 2)
        probe = Probe(bench)
        time.sleep(3)
        out["memory_idle_mb"] = MemorySampler(bench).sample()
        first = args.delays[0]
        lm.set_delay(first)
        log("  warm-up job")
        out["warmup"] = probe.run_job(payload(lm.url, seed=999, optimizer="bootstrap"))
        out["jobs"] = {}
        if args.profile:
            PROFILE.update(dir=args.profile, pids={k: v for k, v in bench.pids().items() if k != "worker"})
        for delay in [] if args.api_only else args.delays:
            for optimizer in args.optimizers:
                if delay != first and optimizer not in args.slow_optimizers:
                    continue
                key = f"{optimizer}@{delay:g}ms"
                out["jobs"][key] = service_runs(probe, lm, delay, optimizer, args.runs)
        if "throughput" not in args.skip:
            log(f"  throughput: {args.throughput_jobs} small jobs at once")
            out["throughput"], out["memory_jobs_mb"] = throughput(probe, lm, args.throughput_jobs, first)
            log(f"  {out['throughput']}")
        if "cancel" not in args.skip:
            log(f"  cancel: {args.cancel_trials} trials")
            out["cancel"] = cancel(probe, lm, args.cancel_trials)
        if "api" not in args.skip:
            runs = out["jobs"].get(f"bootstrap@{first:g}ms") or [out["warmup"]]
            finished = runs[-1]["job_id"]
            out["api_ms"] = api_latency(probe, lm, finished, args.stored_jobs, args.big_jobs, args.requests)
        probe.close()
    finally:
        bench.stop()
    out["overhead"] = overhead_table(out["jobs"], plain)
    return out


def overhead_table(jobs: dict, plain: dict) -> dict:
    table = {}
    for key, rows in jobs.items():
        base = plain.get(key)
        totals = [r["total_s"] for r in rows]
        entry = {
            "service_total_s": summarize(totals),
            "to_first_line_s": summarize([r["to_first_line_s"] for r in rows]),
            "pickup_s": summarize([r["pickup_s"] for r in rows]),
            "pending_to_running_s": summarize([r["pending_to_running_s"] for r in rows]),
            "running_to_first_line_s": summarize([r["running_to_first_line_s"] for r in rows]),
            "runtime_in_flow_s": summarize([r["runtime_s"] for r in rows]),
            "after_work_s": summarize([r["after_work_s"] for r in rows]),
        }
        if base:
            opt = [b["optimization_s"] for b in base]
            wall = [b["wall_s"] for b in base]
            entry["plain_optimization_s"] = summarize(opt)
            entry["plain_process_s"] = summarize(wall)
            entry["overhead_vs_in_process_s"] = {
                q: round(entry["service_total_s"][q] - entry["plain_optimization_s"][q], 3)
                for q in ("p50", "p95", "p99")
            }
            # Paired by seed: run i of both sides optimizes the same dataset (seed 1000 + i).
            paired = [r["total_s"] - b["optimization_s"] for r, b in zip(rows, base, strict=False)]
            entry["paired_overhead_s"] = summarize(paired)
            entry["overhead_vs_plain_process_s"] = {
                q: round(entry["service_total_s"][q] - entry["plain_process_s"][q], 3) for q in ("p50", "p95", "p99")
            }
        table[key] = entry
    return table


# -- report ----------------------------------------------------------------------------------


def environment() -> dict:
    import dspy
    import prefect

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    mem = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gb": round(mem / 1024 / 1024, 1),
        "python": platform.python_version(),
        "prefect": prefect.__version__,
        "dspy": dspy.__version__,
        "loadavg_at_start": os.getloadavg(),
        "command": " ".join(sys.argv),
    }


def fmt(stats: dict, keys=("p50", "p95", "p99")) -> str:
    return " / ".join(f"{stats[k]:g}" for k in keys) if stats.get("n", 1) else "-"


def table_section(report: dict, key: str, heading: str, header: str, row) -> list[str]:
    """A table with a row per database whose results have `key` (`row` formats the cells
    after the db column); nothing when no database has it."""
    rows = [f"| {db['db']} | {row(db[key])}" for db in report["databases"] if db.get(key)]
    if not rows:
        return []
    return [heading, header, "|" + "---|" * (header.count("|") - 1), *rows]


def markdown(report: dict) -> str:
    lines = []
    env = report["environment"]
    lines.append(
        f"{env['date']}; {env['nproc']} CPUs ({env['cpu']}), {env['ram_gb']} GB RAM; Python {env['python']}, "
        f"Prefect {env['prefect']}, DSPy {env['dspy']}; `{env['command']}`\n"
    )
    if any(db["overhead"] for db in report["databases"]):
        lines.append("### 1-2. Per-job overhead (seconds, p50 / p95 / p99)\n")
        lines.append(
            "| db | job | runs | plain: optimization in-process | plain: whole process | service: submit→terminal "
            "| **overhead vs in-process** | paired by seed | vs plain process | submit→pickup | pickup→Running "
            "| Running→first line | submit→first line | after the work |"
        )
        lines.append("|" + "---|" * 14)
        for db in report["databases"]:
            for key, e in db["overhead"].items():
                lines.append(
                    f"| {db['db']} | {key} | {e['service_total_s']['n']} "
                    f"| {fmt(e.get('plain_optimization_s', {'n': 0}))} "
                    f"| {fmt(e.get('plain_process_s', {'n': 0}))} | {fmt(e['service_total_s'])} "
                    f"| **{fmt(e['overhead_vs_in_process_s'])}** | {fmt(e.get('paired_overhead_s', {'n': 0}))} "
                    f"| {fmt(e['overhead_vs_plain_process_s'])} "
                    f"| {fmt(e['pickup_s'])} | {fmt(e['pending_to_running_s'])} | {fmt(e['running_to_first_line_s'])} "
                    f"| {fmt(e['to_first_line_s'])} | {fmt(e['after_work_s'])} |"
                )
    lines += table_section(
        report,
        "throughput",
        "\n### 3. Throughput (2 job slots)\n",
        "| db | jobs | completed | submitting all | first submit → last terminal | jobs/min |",
        lambda t: f"{t['jobs']} | {t['completed']} | {t['submit_all_s']} s | {t['elapsed_s']} s "
        f"| **{t['jobs_per_min']}** |",
    )
    if any("throughput" in db for db in report["databases"]):
        small = report["plain"].get("small")
        if small:
            lines.append(
                f"\nThe small job ({SMALL_JOB}) alone in a plain process: optimization "
                f"{fmt(summarize([r['optimization_s'] for r in small]))} s, whole process "
                f"{fmt(summarize([r['wall_s'] for r in small]))} s (p50 / p95 / p99)."
            )
    if any("api_ms" in db for db in report["databases"]):
        lines.append("\n### 4. API latency (ms, p50 / p95 / p99, sequential requests)\n")
        lines.append("| db | request | n | p50 / p95 / p99 | max |")
        lines.append("|---|---|---|---|---|")
        for db in report["databases"]:
            for name, s in db.get("api_ms", {}).items():
                if isinstance(s, dict) and s["n"]:  # --big-jobs 0 measures no 5,000-row POST
                    lines.append(f"| {db['db']} | {name} | {s['n']} | {fmt(s)} | {s['max']:g} |")
    lines += table_section(
        report,
        "cancel",
        "\n### 5. Cancel (LM delay 200 ms)\n",
        "| db | trials | tree gone p50 / p95 / max (s) | Cancelled p50 / p95 (s) | LM calls after cancel (max) |",
        lambda c: f"{c['trials']} | {fmt(c['tree_gone_s'], ('p50', 'p95', 'max'))} "
        f"| {fmt(c['cancelled_state_s'], ('p50', 'p95'))} | {c['lm_calls_after_cancel']['max']:g} |",
    )
    lines.append("\n### 6. Memory (RSS, MB)\n")
    roles = [
        "prefect_server",
        "worker",
        "api",
        "zygote",
        "zygote PSS",
        "job relay",
        "job supervisor",
        "job supervisor PSS",
        "job engine",
        "job engine PSS",
        "job engine + its children",
    ]
    lines.append("| db | when | " + " | ".join(roles) + " |")
    lines.append("|---|---|" + "---|" * len(roles))
    for db in report["databases"]:
        idle = db.get("memory_idle_mb", {})
        lines.append(f"| {db['db']} | idle | " + " | ".join(f"{idle.get(r, '-')}" for r in roles) + " |")
        two = db.get("memory_jobs_mb", {}).get("two_jobs_running")
        if two:
            lines.append(
                f"| {db['db']} | 2 jobs running (peak) | " + " | ".join(f"{two.get(r, '-')}" for r in roles) + " |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="sqlite")
    parser.add_argument("--delay-ms", default="20,300", help="local LM delay per call; item 1 runs at each")
    parser.add_argument("--runs", type=int, default=5, help="runs per optimizer and delay (item 1)")
    parser.add_argument("--optimizers", default="bootstrap,miprov2")
    parser.add_argument(
        "--slow-optimizers", default="bootstrap,miprov2", help="optimizers run at delays after the first"
    )
    parser.add_argument("--throughput-jobs", type=int, default=20)
    parser.add_argument("--stored-jobs", type=int, default=1000)
    parser.add_argument("--big-jobs", type=int, default=60)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--cancel-trials", type=int, default=6)
    parser.add_argument("--skip", default="", help="comma list of: throughput, cancel, api")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 runs, 20 ms, 6 jobs, 100 stored")
    parser.add_argument(
        "--warm-start",
        choices=["off", "on", "both"],
        default="on",
        help="job processes fork from a pre-imported zygote (DSPY_SERVICE_WARM_START, the service's default); "
        "off: cold start; both: cold, then warm",
    )
    parser.add_argument(
        "--api-only",
        action="store_true",
        help="no plain baseline, no job sweep (items 1-2); the warm-up job is item 4's finished job",
    )
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the API and server per timed loop, into DIR")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--from-json", type=Path, default=None, help="only print the tables of a recorded run")
    args = parser.parse_args()
    if args.from_json:
        report = json.loads(args.from_json.read_text())
        for db in report["databases"]:
            db["overhead"] = overhead_table(db["jobs"], report["plain"])
        print(markdown(report))
        return 0
    if args.quick:
        args.delay_ms, args.runs, args.throughput_jobs = "20", 2, 6
        args.stored_jobs, args.big_jobs, args.requests, args.cancel_trials = 100, 10, 50, 2
    args.delays = [float(d) for d in args.delay_ms.split(",")]
    args.optimizers = args.optimizers.split(",")
    args.slow_optimizers = args.slow_optimizers.split(",")
    args.skip = set(filter(None, args.skip.split(",")))
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]

    report = {"environment": environment(), "plain": {}, "databases": []}
    lm = start_job_lm(delay_ms=args.delays[0])
    try:
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
        log("plain-process baseline")
        for delay in [] if args.api_only else args.delays:
            for optimizer in args.optimizers:
                if delay != args.delays[0] and optimizer not in args.slow_optimizers:
                    continue
                report["plain"][f"{optimizer}@{delay:g}ms"] = plain_runs(lm, delay, optimizer, args.runs)
        if "throughput" not in args.skip and not args.api_only:
            report["plain"]["small"] = plain_runs(lm, args.delays[0], SMALL_JOB["optimizer"], 3, SMALL_JOB["rows"])
        modes = {"off": [False], "on": [True], "both": [False, True]}[args.warm_start]
        for db in dbs:
            for warm in modes:
                report["databases"].append(bench_database(db, lm, args, report["plain"], warm_start=warm))
            if args.json:  # keep what we have if a later database fails
                args.json.write_text(json.dumps(report, indent=2))
    finally:
        lm.close()
    report["environment"]["loadavg_at_end"] = os.getloadavg()
    text = markdown(report)
    report["markdown"] = text
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
