"""What starting a job process costs, piece by piece (the warm-start evaluation of issue #7).

Times, each --runs times in fresh interpreters (wall and CPU seconds, median):
- the interpreter alone, `import prefect`, `import dspy`, `import prefect.engine`,
  `import deployments.runtime.supervisor` (our supervisor) and `import flows.optimize` (the flow's
  entrypoint: prefect + dspy + the service's tasks);
- `os.fork()` of a parent that has already imported flows.optimize, until the child runs
  (what a fork-from-a-warm-parent worker would pay instead of the imports);
- the same interpreter and entrypoint imports inside a job's bubblewrap sandbox
  (deployments/runtime/sandbox.py): the sandbox's start cost is the difference.

    python bench/startup.py [--runs 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

STEPS = {
    "python -c pass": "pass",
    "import deployments.runtime.supervisor": "import deployments.runtime.supervisor",
    "import dspy": "import dspy",
    "import prefect": "import prefect",
    "import prefect.engine": "import prefect.engine",
    "import flows.optimize (entrypoint)": "import flows.optimize",
}


SANDBOXED_STEPS = {
    "python -c pass (in a job sandbox)": "pass",
    "import flows.optimize (in a job sandbox)": "import flows.optimize",
}


def timed_interpreter(code: str, sandboxed: bool = False) -> tuple[float, float]:
    from deployments.runtime.sandbox import JobDirectory, SandboxLayout, bwrap_command

    env = {**os.environ, "PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    command = [sys.executable, "-c", code]
    directory = JobDirectory(None, "bench") if sandboxed else None
    if directory is not None:
        command = bwrap_command(SandboxLayout(job_dir=directory.path), command)
    before = os.times()
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    if directory is not None:
        directory.remove()
    wall = time.perf_counter() - started
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, cpu


def fork_from_warm_parent(runs: int) -> list[float]:
    """In a child interpreter: import the flow's module, then fork `runs` times."""
    code = """
import os, sys, time, json
import flows.optimize
out = []
for _ in range(RUNS):
    r, w = os.pipe()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.write(w, b"x"); os._exit(0)
    os.read(r, 1)
    out.append(time.perf_counter() - started)
    os.waitpid(pid, 0)
print(json.dumps(out))
""".replace("RUNS", str(runs))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    report = {}
    steps = [(name, code, False) for name, code in STEPS.items()]
    steps += [(name, code, True) for name, code in SANDBOXED_STEPS.items()]
    for name, code, sandboxed in steps:
        samples = [timed_interpreter(code, sandboxed) for _ in range(args.runs)]
        report[name] = {
            "wall_s": round(statistics.median(s[0] for s in samples), 3),
            "cpu_s": round(statistics.median(s[1] for s in samples), 3),
        }
        print(f"{name:44s} wall {report[name]['wall_s']:6.3f} s  cpu {report[name]['cpu_s']:6.3f} s", file=sys.stderr)
    forks = fork_from_warm_parent(max(args.runs, 20))
    report["fork of a warm parent (child running)"] = {"wall_s": round(statistics.median(forks), 4)}
    print(f"{'fork of a warm parent':40s} wall {statistics.median(forks) * 1000:6.1f} ms", file=sys.stderr)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
