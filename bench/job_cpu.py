"""Issue #16: where a job's CPU goes, by process role, and Prefect's own floor per flow run.

Starts a private stack (SQLite; cold or --warm-start, sandbox on as configured), the local LM
as a process of its own, and

1. samples every process below this one from /proc (deployments/runtime/procfs.py) every
   --interval s while the stack is idle (CPU per second of each role, idle), then while
   --jobs small jobs (BootstrapFewShot, 20 rows, 20 ms LM) submitted at once run at 2 slots,
   until the last ends and --settle s more (the replacement warm slots finish importing);
   CPU per job by role = (the role's CPU in that window - its idle rate x the window) / jobs.
   A process's CPU is its last sample: a process that exits loses at most one interval;
   the worker's and zygote's "reaped children" times (cutime+cstime) show what was missed;
2. with --py-spy, records the engines' stacks (`py-spy record --subprocesses` below the
   worker, or the zygote in warm start) and splits their on-CPU samples into imports,
   the job's work (DSPy, the LM calls, our tasks), our telemetry/runtime code, and
   Prefect's own engine/task/state/log bookkeeping;
3. the wall-clock steps of each job (from the run's state history and logs, server clock);
4. with --count-calls, the Prefect requests of the worker and everything behind it
   (tests/support/prefect_tap.py in front of the worker);
5. with --floor N, Prefect's own floor: one interpreter that has imported Prefect runs N
   no-op flow runs (with --floor-tasks no-op tasks each, as our flow's stages) against the
   stack's server; CPU of that client and of the server per flow run.

    PYTHONPATH=. .venv/bin/python bench/job_cpu.py --jobs 20 [--warm-start] [--py-spy] \
        [--count-calls] [--floor 30] --json bench/results/job-cpu-cold.json

Failures: a job that does not end COMPLETED is reported in `states`, not raised; a stack
that does not come up raises with its log tails (BenchStack.start).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, BenchStack, payload, print_and_save, summarize  # noqa: E402
from run import SMALL_JOB, Probe, environment, log  # noqa: E402

from deployments.runtime import procfs  # noqa: E402
from tests.support.polling import wait_until  # noqa: E402
from tests.support.prefect_tap import PrefectTap  # noqa: E402
from tests.support.stack import reachable_by_jobs  # noqa: E402

# First match wins: (role, substring of the command line); `comm` rules come first.
TOP_LEVEL = [
    ("profiler (py-spy)", "py-spy"),
    ("floor client", "--floor-child"),
    ("prefect server", "prefect server"),
    ("prefect server", "prefect.server"),
    ("zygote", "deployments.runtime.zygote"),
    ("worker", "deployments.worker"),
    ("notify worker", "notify"),
    ("program server", "program"),
    ("local LM", "local_lm"),
    ("api", "uvicorn"),
    ("api", "api"),
]
ENGINE_MARKS = ("sandbox_entry", "warm_entry", "prefect.engine")
NOT_COUNTED = {"profiler (py-spy)", "floor client"}  # measurement tools, not the stack


class Roles:
    """A role per process below `root`, from its command line and its parent's role.

    Cached by (pid, command name): a process that execs (bwrap's child becoming the engine)
    is classified again. A role only inherited from the parent is not cached: a fork that
    has not exec'd yet looks like its parent."""

    def __init__(self, root: int):
        self.root = root
        self.cache: dict[tuple[int, str], str] = {}
        self.role: dict[int, str] = {}

    def of(self, pid: int, procs: dict[int, procfs.CpuTimes]) -> str | None:
        proc = procs.get(pid)
        if proc is None:
            return None
        if (pid, proc.comm) in self.cache:
            return self.cache[(pid, proc.comm)]
        parent_role = "bench" if proc.ppid == self.root else self.of(proc.ppid, procs)
        if parent_role is None:
            return None
        role = self.classify(pid, proc.comm, parent_role)
        if role != parent_role:
            self.cache[(pid, proc.comm)] = role
        self.role[pid] = role
        return role

    @staticmethod
    def classify(pid: int, comm: str, parent_role: str) -> str:
        cmd = procfs.cmdline_of(pid) or ""
        if comm == "bwrap":
            return "bubblewrap"
        if parent_role == "engine" or any(mark in cmd for mark in ENGINE_MARKS):
            return "engine"
        if "deployments.runtime.relay" in cmd:
            return "relay" if parent_role == "worker" else "supervisor"
        if parent_role == "zygote":
            return "supervisor / warm slot"  # a fork of the zygote: a job's supervisor-to-be
        if parent_role == "bench":
            return next((role for role, mark in TOP_LEVEL if mark in cmd), f"other: {cmd[:60]}")
        return parent_role


class CpuSampler(threading.Thread):
    """Last seen CPU seconds of every process below this one, by pid, with its role."""

    def __init__(self, interval: float):
        super().__init__(daemon=True)
        self.interval = interval
        self.roles = Roles(os.getpid())
        self.cpu: dict[int, float] = {}
        self.reaped: dict[int, float] = {}
        self.stop_event = threading.Event()
        self.lock = threading.Lock()

    def sample(self) -> None:
        procs = {pid: times for pid in procfs.pids() if (times := procfs.cpu_times(pid)) is not None}
        for pid, times in procs.items():
            role = self.roles.of(pid, procs)
            if role is None or role in NOT_COUNTED:
                continue
            with self.lock:
                self.cpu[pid] = times.own
                self.reaped[pid] = times.reaped_children

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.sample()

    def snapshot(self) -> tuple[dict[int, float], dict[int, float]]:
        self.sample()
        with self.lock:
            return dict(self.cpu), dict(self.reaped)

    def by_role(self, before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
        out: Counter = Counter()
        for pid, value in after.items():
            out[self.roles.role[pid]] += value - before.get(pid, 0.0)
        return dict(out)

    def stop(self) -> None:
        self.stop_event.set()
        self.join()


def start_lm_process(delay_ms: float) -> tuple[subprocess.Popen, str]:
    """The local LM as a process of its own (its CPU is then a role, not this process's)."""
    port_file = Path(tempfile.mkdtemp(prefix="bench-lm-")) / "port"
    command = [sys.executable, "-m", "dspy_service.testing.local_lm", "--port", "0", "--delay-ms", str(delay_ms)]
    command += ["--port-file", str(port_file), "--log-level", "WARNING"]
    process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wait_until(lambda: port_file.exists() and port_file.read_text().strip(), 30, 0.1, what="the local LM's port")
    url = f"http://127.0.0.1:{port_file.read_text().strip()}/v1"
    reachable_by_jobs(url)
    return process, url


class LmUrl:
    """What bench payloads need of an LM server."""

    def __init__(self, url: str):
        self.url = url


# -- engine profile (py-spy) ------------------------------------------------------------------


PROFILE_RULES = [  # (category, any of these in a sample's frames); first match wins
    ("imports", ("<frozen importlib._bootstrap",)),
    ("Prefect: logs and events", ("(prefect/logging/", "(prefect/events/")),
    ("Prefect: API client", ("(prefect/client/",)),
    ("job's work: DSPy, LM calls, our tasks", ("(dspy/", "(litellm/", "(openai/", "(tasks/")),
    ("our flow, telemetry and runtime code", ("(flows/", "(deployments/", "(dspy_service/")),
    ("Prefect: flow/task engine, states, results", ("(prefect/",)),
]
WAITING = ("EpollSelector.select", "Condition.wait", "socket.accept", "_send_heartbeats")  # idle leaves
OTHER = "other (interpreter, asyncio, threads)"


def engine_category(frames: list[str]) -> str:
    """One on-CPU sample of an engine, by what it is doing: imports if it is importing,
    else the group of its leaf-most frame that belongs to one (PROFILE_RULES)."""
    if any(PROFILE_RULES[0][1][0] in frame for frame in frames):
        return PROFILE_RULES[0][0]
    for frame in reversed(frames):
        for name, marks in PROFILE_RULES[1:]:
            if any(mark in frame for mark in marks):
                return name
    return OTHER


def prefect_entry(frames: list[str]) -> str:
    """Where a Prefect sample entered Prefect from our code: `our frame -> Prefect frame`."""
    ours = ("(flows/", "(tasks/", "(dspy_service/")
    last = max((i for i, frame in enumerate(frames) if any(mark in frame for mark in ours)), default=None)
    if last is None or last + 1 >= len(frames):
        return "Prefect's own threads and engine (no frame of ours)"
    return f"{frames[last].split(' (')[0]} -> {frames[last + 1].split(' (')[0]}"


def engine_profile(path: Path) -> dict:
    """Shares of the engines' on-CPU samples in a py-spy raw file (`--subprocesses`: a
    sample's first frames name its process and the processes above it)."""
    shares: Counter = Counter()
    entries: Counter = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        processes = [frame for frame in frames if frame.startswith("process ")]
        if not count.isdigit() or not processes or not any(mark in processes[-1] for mark in ENGINE_MARKS):
            continue
        code = frames[len(processes) :]
        if not code or any(code[-1].startswith(wait) for wait in WAITING):
            continue
        category = engine_category(code)
        shares[category] += int(count)
        if category.startswith("Prefect"):
            entries[prefect_entry(code)] += int(count)
    total = sum(shares.values()) or 1
    return {
        "samples": total,
        "shares": {name: round(n / total, 3) for name, n in shares.most_common()},
        "prefect_entered_from": {name: round(n / total, 3) for name, n in entries.most_common(12)},
    }


def supervisor_profile(path: Path) -> dict:
    """Shares of the supervisors' on-CPU samples (a relay's fork, cold, or a zygote's, warm)
    by the leaf-most frame of our runtime or, without one, the leaf's module."""
    shares: Counter = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        processes = [frame for frame in frames if frame.startswith("process ")]
        if not count.isdigit() or len(processes) < 2:
            continue
        last, above = processes[-1], processes[-2]
        if not any(mark in last and mark in above for mark in ("runtime.relay", "runtime.zygote")):
            continue
        code = frames[len(processes) :]
        if not code or any(code[-1].startswith(wait) for wait in WAITING):
            continue
        if any(PROFILE_RULES[0][1][0] in frame for frame in code):
            shares["imports"] += int(count)
            continue
        ours = [frame for frame in code if "(deployments/" in frame or "(dspy_service/" in frame]
        frame = ours[-1] if ours else code[-1]
        function, _, place = frame.partition(" (")
        shares[f"{function} ({place.split(':')[0]})"] += int(count)
    total = sum(shares.values()) or 1
    return {"samples": total, "shares": {name: round(n / total, 3) for name, n in shares.most_common(20)}}


def server_profile(path: Path) -> dict:
    """Shares of the Prefect server's on-CPU samples by the API route function or background
    service they run in (the leaf-most frame in prefect/server/api/ or services/)."""
    shares: Counter = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not count.isdigit() or not frames or any(frames[-1].startswith(wait) for wait in WAITING):
            continue
        where = [f for f in frames if "(prefect/server/api/" in f or "(prefect/server/services/" in f]
        if where:
            function, _, place = where[0].partition(" (")
            shares[f"{function} ({place.split(':')[0].removeprefix('prefect/server/')})"] += int(count)
        elif any("(prefect/server/events/" in f for f in frames):
            shares["events pipeline (prefect/server/events)"] += int(count)
        elif any("(uvicorn/" in f or "(starlette/" in f or "(fastapi/" in f for f in frames):
            shares["HTTP serving (uvicorn, starlette, fastapi)"] += int(count)
        else:
            shares[OTHER] += int(count)
    total = sum(shares.values()) or 1
    return {"samples": total, "shares": {name: round(n / total, 3) for name, n in shares.most_common(25)}}


def start_py_spy(pid: int, out: Path, subprocesses: bool = True) -> subprocess.Popen:
    command = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid)]
    command += ["--subprocesses"] if subprocesses else []
    # --gil: only samples of a thread holding the GIL, i.e. running Python (py-spy cannot
    # tell idle threads apart inside the sandbox's pid namespace).
    command += ["--format", "raw", "--rate", "50", "--gil", "--nonblocking", "-o", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached
    return process


# -- the measurement --------------------------------------------------------------------------


def run_batch(probe: Probe, lm_url: str, jobs: int) -> tuple[list[dict], float, float]:
    bodies = [payload(lm_url, seed=3000 + i, **SMALL_JOB) for i in range(jobs)]
    started = time.time()
    with concurrent.futures.ThreadPoolExecutor(min(jobs, 20)) as pool:
        submitted = list(pool.map(probe.submit, bodies))
    for job_id, _ in submitted:
        probe.wait_terminal(job_id, interval=0.2)
    ended = time.time()
    rows = []
    for job_id, t0 in submitted:
        row = probe.timeline(job_id, t0)
        result = (probe.api.get(f"/jobs/{job_id}").json().get("result")) or {}
        row["runtime_s"] = result.get("runtime_seconds")
        rows.append(row)
    last = max(r["total_s"] + t0 for r, (_, t0) in zip(rows, submitted, strict=True) if r["total_s"])
    return rows, started, max(last, ended - 0.2) if last else ended


def steps(rows: list[dict]) -> dict:
    keys = ["pickup_s", "pending_to_running_s", "running_to_first_line_s", "runtime_s", "total_s", "terminal_to_exit_s"]
    out = {key: summarize([r[key] for r in rows if r.get(key) is not None]) for key in keys}
    after = [
        r["total_s"] - r["to_first_line_s"] - r["runtime_s"]
        for r in rows
        if None not in (r.get("total_s"), r.get("to_first_line_s"), r.get("runtime_s"))
    ]
    out["after_work_s"] = summarize(after)
    out["states"] = dict(Counter(r["state"] for r in rows))
    return out


def measure(bench: BenchStack, lm_url: str, args, out: dict) -> None:
    sampler = CpuSampler(args.interval)
    sampler.start()
    probe = Probe(bench)
    try:
        probe.run_job(payload(lm_url, seed=2999, **SMALL_JOB))  # warm-up: caches, connections, a fresh slot
        time.sleep(args.settle)
        idle0, _ = sampler.snapshot()
        t_idle = time.time()
        time.sleep(args.idle)
        idle1, reaped0 = sampler.snapshot()
        idle_s = time.time() - t_idle
        out["idle_cpu_per_s"] = {k: round(v / idle_s, 4) for k, v in sampler.by_role(idle0, idle1).items()}
        spy = None
        if args.py_spy:
            root = bench.stack.zygotes[0].process.pid if bench.warm_start else bench.stack.workers[0].process.pid
            spy = start_py_spy(root, Path(bench.home) / "engines.pyspy.txt")
            server_spy = start_py_spy(bench.pids()["prefect_server"], Path(bench.home) / "server.pyspy.txt", False)
        if args.tap:
            args.tap.reset()
        rows, started, last = run_batch(probe, lm_url, args.jobs)
        time.sleep(args.settle)
        end, reaped1 = sampler.snapshot()
        window = time.time() - started
        if spy:
            for process in (spy, server_spy):
                process.send_signal(2)
                process.wait(120)
            out["engine_profile"] = engine_profile(Path(bench.home) / "engines.pyspy.txt")
            out["supervisor_profile"] = supervisor_profile(Path(bench.home) / "engines.pyspy.txt")
            out["server_profile"] = server_profile(Path(bench.home) / "server.pyspy.txt")
        if args.tap:
            out["prefect_requests_per_job"] = round(sum(args.tap.counts().values()) / args.jobs, 1)
            out["prefect_requests_by_route_per_job"] = {
                route: round(n / args.jobs, 2) for route, n in args.tap.counts().most_common()
            }
    finally:
        sampler.stop()
        probe.close()
    total = sampler.by_role(idle1, end)
    out["throughput"] = {
        "jobs": args.jobs,
        "elapsed_s": round(last - started, 2),
        "jobs_per_min": round(args.jobs / (last - started) * 60, 1),
    }
    out["window_s"] = round(window, 2)
    out["cpu_per_job_s"] = {
        role: round((cpu - out["idle_cpu_per_s"].get(role, 0.0) * window) / args.jobs, 3)
        for role, cpu in sorted(total.items(), key=lambda kv: -kv[1])
    }
    out["cpu_per_job_gross_s"] = {role: round(cpu / args.jobs, 3) for role, cpu in total.items()}
    pids = bench.pids()
    out["reaped_children_per_job_s"] = {
        role: round((reaped1.get(pid, 0.0) - reaped0.get(pid, 0.0)) / args.jobs, 3)
        for role, pid in pids.items()
        if role in ("worker", "zygote")
    }
    out["steps"] = steps(rows)


# -- Prefect's floor per flow run ---------------------------------------------------------------


def floor_child(runs: int, tasks: int) -> None:
    """In a fresh interpreter pointed at the stack's server: `runs` no-op flow runs with
    `tasks` no-op task runs each, after one warm-up run; prints this process's CPU."""
    from prefect import flow, get_run_logger, task

    @task
    def stage(i: int) -> int:
        return i

    @flow(name="bench-noop")
    def noop(n: int) -> int:
        get_run_logger().info("job: no-op")
        return sum(stage(i) for i in range(n))

    noop(tasks)
    calls = []  # (flow run id, call start, call end), wall clock (the server's: same machine)
    started_cpu, started = time.process_time(), time.time()
    for _ in range(runs):
        begun = time.time()
        state = noop(tasks, return_state=True)
        calls.append((state.state_details.flow_run_id, begun, time.time()))
    out = {"cpu_s": time.process_time() - started_cpu, "wall_s": time.time() - started}
    print(json.dumps({**out, "steps": floor_steps(calls)}))


def floor_steps(calls: list) -> dict:
    """Where a no-op flow run's wall time goes, from its state history (read after the runs,
    so the reads are not in the timed calls): the call to the run's creation, creation to
    Running, Running to Completed, and Completed to the call's return (the engine's exit)."""
    from prefect.client.orchestration import get_client

    steps: dict[str, list[float]] = {
        "call→created": [],
        "created→Running": [],
        "Running→Completed": [],
        "Completed→return": [],
    }
    with get_client(sync_client=True) as client:
        for run_id, begun, ended in calls:
            run = client.read_flow_run(run_id)
            at = {state.type.value: state.timestamp.timestamp() for state in client.read_flow_run_states(run_id)}
            created = run.created.timestamp()
            steps["call→created"].append(created - begun)
            steps["created→Running"].append(at["RUNNING"] - created)
            steps["Running→Completed"].append(at["COMPLETED"] - at["RUNNING"])
            steps["Completed→return"].append(ended - at["COMPLETED"])
    return {name: summarize([round(v, 4) for v in values]) for name, values in steps.items()}


def floor(bench: BenchStack, args) -> dict:
    """The floor with no task run and with --floor-tasks per flow run (their difference: a task run's cost)."""
    return {f"{tasks} task runs": floor_once(bench, args, tasks) for tasks in sorted({0, args.floor_tasks})}


def floor_once(bench: BenchStack, args, tasks: int) -> dict:
    env = {
        **os.environ,
        **bench.stack.env,  # the Prefect client settings every process of the stack gets
        "PYTHONPATH": str(ROOT),
        "PREFECT_API_URL": bench.config.prefect_api_url,
        "PREFECT_API_AUTH_STRING": bench.stack.prefect_auth,
    }
    sampler = CpuSampler(args.interval)
    sampler.start()
    try:
        before, _ = sampler.snapshot()
        command = [sys.executable, __file__, "--floor-child", str(args.floor), "--floor-tasks", str(tasks)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        after, _ = sampler.snapshot()
    finally:
        sampler.stop()
    if done.returncode:
        raise RuntimeError(f"floor child failed:\n{done.stderr[-3000:]}")
    child = json.loads(done.stdout.strip().splitlines()[-1])
    server = sampler.by_role(before, after).get("prefect server", 0.0)
    return {
        "runs": args.floor,
        "tasks_per_run": tasks,
        "client_cpu_per_run_s": round(child["cpu_s"] / args.floor, 3),
        "server_cpu_per_run_s": round(server / (args.floor + 1), 3),  # the warm-up run included
        "wall_per_run_s": round(child["wall_s"] / args.floor, 3),
        "steps_s": child["steps"],
    }


# -- report -------------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    out = report["result"]
    lines = [
        f"{report['environment']['date']}; `{report['environment']['command']}`; load average at start "
        f"{report['environment']['loadavg_at_start'][0]:.2f}\n",
        f"throughput: {out['throughput']}\n",
        "| role | CPU-s per job (net of idle) | gross | idle CPU/s |",
        "|---|---|---|---|",
    ]
    for role, value in out["cpu_per_job_s"].items():
        lines.append(
            f"| {role} | {value} | {out['cpu_per_job_gross_s'][role]} | {out['idle_cpu_per_s'].get(role, 0)} |"
        )
    lines.append(
        f"| **total** | **{round(sum(out['cpu_per_job_s'].values()), 3)}** | "
        f"{round(sum(out['cpu_per_job_gross_s'].values()), 3)} | |"
    )
    lines.append(f"\nreaped children per job (check): {out['reaped_children_per_job_s']}")
    lines.append("\n| step (s) | p50 | p95 | max |\n|---|---|---|---|")
    for key, stats in out["steps"].items():
        if key != "states" and stats.get("n"):
            lines.append(f"| {key} | {stats['p50']} | {stats['p95']} | {stats['max']} |")
    lines.append(f"\nstates: {out['steps']['states']}")
    keys = ("engine_profile", "supervisor_profile", "server_profile", "prefect_requests_per_job")
    keys += ("prefect_requests_by_route_per_job", "floor")
    for key in keys:
        if key in out:
            lines.append(f"\n{key}: {json.dumps(out[key])}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--warm-start", action="store_true")
    parser.add_argument("--delay-ms", type=float, default=20)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between /proc samples")
    parser.add_argument("--idle", type=float, default=10, help="seconds of idle sampling before the jobs")
    parser.add_argument("--settle", type=float, default=4, help="seconds after the last job (slots refill)")
    parser.add_argument("--py-spy", action="store_true", help="profile the engines (adds their sampling cost)")
    parser.add_argument("--count-calls", action="store_true", help="count the worker side's Prefect requests")
    parser.add_argument("--floor", type=int, default=0, help="no-op flow runs in one warm interpreter")
    parser.add_argument("--floor-tasks", type=int, default=6, help="no-op task runs per no-op flow run")
    parser.add_argument("--floor-child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--stack-env", action="append", default=[], metavar="KEY=VAL")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.floor_child:
        floor_child(args.floor_child, args.floor_tasks)
        return 0
    report = {"environment": environment(), "result": {}}
    lm, lm_url = start_lm_process(args.delay_ms)
    bench = BenchStack(
        job_slots=2,
        prefix="bench-cpu-",
        warm_start=args.warm_start,
        env=dict(item.split("=", 1) for item in args.stack_env),
    )
    args.tap = None
    if args.count_calls:
        args.tap = PrefectTap(bench.config.prefect_api_url.removesuffix("/api")).start()
        bench.stack.workers[0].extra_env["PREFECT_API_URL"] = args.tap.url
    try:
        log(f"starting the stack ({'warm start' if args.warm_start else 'cold'})")
        bench.start(progress=lambda m: log("  " + m))
        measure(bench, lm_url, args, report["result"])
        if args.floor:
            log(f"Prefect's floor: {args.floor} no-op flow runs")
            report["result"]["floor"] = floor(bench, args)
    finally:
        bench.stop()
        if args.tap:
            args.tap.stop()
        lm.terminate()
        lm.wait(10)
    print_and_save(report, markdown(report), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
