"""Issue #16: where a warm engine's wall time goes between its job's hand-off and Running.

Starts a private SQLite stack (warm start, the default; sandbox as configured), the local LM
as a process of its own, and for each of --jobs small jobs (BootstrapFewShot, 20 rows,
20 ms LM) submitted one after another: attaches `py-spy record --idle` (wall-clock
samples, at --rate Hz) to every idle warm engine (`deployments.runtime.warm_entry`), runs
the job, stops the profilers, and splits the main thread's samples of the engine that ran
it into phases (`PHASES`, first match wins). Samples waiting for the job's environment on
stdin are the engine idling before its job and are left out; "flow body and end" is the
job's own work and Prefect's end of run, after Running.

    PYTHONPATH=. .venv/bin/python bench/engine_start.py --jobs 5 --json bench/results/engine-start.json

Needs py-spy (the `bench` extra) and warm sandboxes (sandbox on, warm start on). The phases
are wall time of one thread on a shared machine: they include waiting for the CPU and for
the server, so compare runs made on the same machine state. Failures: a stack that does
not come up raises with its log tails; a job that does not end raises (wait_terminal).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchStack, payload, print_and_save, summarize  # noqa: E402
from job_cpu import start_lm_process  # noqa: E402
from run import SMALL_JOB, Probe, environment  # noqa: E402

from deployments.runtime import procfs  # noqa: E402

WARM_ENGINE = "deployments.runtime.warm_entry"
# (phase, substring of the joined stack): the first that matches names a main-thread sample.
PHASES = (
    ("idle: waiting for a job", "read_job_environment"),
    ("flow body and end", "run_flow_sync (prefect/flow_engine.py:2132)"),
    ("flow body and end", "run_flow_sync (prefect/flow_engine.py:2133)"),
    ("suspension observer (Prefect)", "setup_flow_run_suspension_request"),
    ("sync client context (Prefect)", "SyncClientContext.get_or_create"),
    ("propose Running (Prefect)", "begin_run"),
    ("rest of the engine's start (Prefect)", "run_flow_sync (prefect/flow_engine.py:2130)"),
    ("adopt the job's environment (ours)", "adopt_environment"),
    ("read the flow run (Prefect)", "load_flow_run"),
    ("load the flow (Prefect)", "load_flow "),
    ("bridges to the proxies (ours)", "start_bridges"),
)
TO_RUNNING = [name for name, _ in PHASES if not name.startswith(("idle", "flow body"))] + ["other before Running"]


def phase_of(stack: str) -> str:
    return next((name for name, marker in PHASES if marker in stack), "other before Running")


def main_thread_phases(raw: Path, interval_ms: float) -> Counter:
    """ms per phase of the engine's main thread (py-spy raw: `frame;frame;... count`)."""
    phases: Counter = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack.startswith("_run_module_as_main"):  # the main thread's outermost frame
            phases[phase_of(stack)] += int(count) * interval_ms
    return phases


def warm_engines() -> list[int]:
    """The Python processes of the warm sandboxes (not their bubblewrap parents)."""
    found = []
    for pid in procfs.pids():
        command = procfs.cmdline_of(pid) or ""
        if WARM_ENGINE in command and "bwrap" not in command.split(" ", 1)[0]:
            found.append(pid)
    return found


def profile_one_job(probe: Probe, lm_url: str, seed: int, rate: int, out: Path) -> Counter:
    profilers = {}
    for pid in warm_engines():
        command = [str(Path(sys.executable).parent / "py-spy"), "record", "--idle", "--rate", str(rate)]
        command += ["--format", "raw", "-o", str(out / f"{seed}-{pid}.txt"), "--pid", str(pid)]
        profilers[pid] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)  # py-spy attached
    job_id, _ = probe.submit(payload(lm_url, seed=seed, **SMALL_JOB))
    probe.wait_terminal(job_id)
    time.sleep(1)
    for process in profilers.values():
        process.send_signal(signal.SIGINT)
    for process in profilers.values():
        process.wait(30)
    busy = [main_thread_phases(path, 1000 / rate) for path in out.glob(f"{seed}-*.txt")]
    # The engine that ran the job is the one that left its stdin wait.
    return max(busy, key=lambda phases: sum(v for k, v in phases.items() if not k.startswith("idle")))


def measure(args) -> dict:
    lm, lm_url = start_lm_process(20)
    bench = BenchStack(db="sqlite", warm_start=True)
    out = Path(tempfile.mkdtemp(prefix="bench-engine-start-"))
    try:
        bench.start()
        time.sleep(args.settle)  # the warm slots finish their imports
        probe = Probe(bench)
        profile_one_job(probe, lm_url, 999, args.rate, out)  # warm-up job, not counted
        jobs = [profile_one_job(probe, lm_url, 1000 + i, args.rate, out) for i in range(args.jobs)]
    finally:
        bench.stop()
        lm.kill()
    phases = sorted({name for job in jobs for name in job if not name.startswith("idle")})
    result = {name: summarize([job.get(name, 0.0) for job in jobs], 0) for name in phases}
    result["hand-off to Running"] = summarize([sum(job.get(n, 0.0) for n in TO_RUNNING) for job in jobs], 0)
    return {"phases_ms": result, "raw_profiles": str(out)}


def markdown(report: dict) -> str:
    lines = [
        f"{report['environment']['date']}; `{report['environment']['command']}`\n",
        "| warm engine, main thread (ms wall) | p50 | max |",
        "|---|---|---|",
    ]
    for name, stats in report["result"]["phases_ms"].items():
        lines.append(f"| {name} | {stats.get('p50')} | {stats.get('max')} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds for the warm slots to import")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    report = {"environment": environment()}
    report["result"] = measure(args)
    print_and_save(report, markdown(report), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
