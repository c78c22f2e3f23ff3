"""Inside a warm sandbox: import what a job needs, wait for the job, then run its engine.

    python -m deployments.runtime.warm_entry      (a warm sandbox's command; warm_sandbox.py)

Started in bubblewrap before any job is known, with the sandbox's environment minus
anything of a job. It imports Prefect, DSPy and the flows (the zygote's preload list:
zygote.py), which is the ~2 CPU-seconds a cold sandboxed engine pays after its job was
handed to the worker, and then reads one line from stdin: the job's engine environment as
JSON, sent by the job's supervisor once the job's proxies listen in /run/dspy. It then
adopts that environment as the zygote's forked engines do (os.environ, our settings,
Prefect's settings), bridges the loopback ports to the proxies (sandbox_entry.py) and runs
`prefect.engine`, exiting with its code.

EOF on stdin (the slot was retired unused) exits 0 without running anything; a line that
is not a JSON object of strings exits 2; a bridge that cannot listen exits 1, all before
any job code runs.
"""

from __future__ import annotations

import json
import os
import sys


def read_job_environment() -> dict[str, str] | None:
    line = sys.stdin.buffer.readline()
    if not line:
        return None
    env = json.loads(line)
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError("the job environment is not an object of strings")
    return env


def main() -> int:
    from deployments.runtime.zygote import preload, run_engine

    preload()
    try:
        env = read_job_environment()
    except ValueError as exc:
        print(f"sandbox: bad job hand-off: {exc}", file=sys.stderr, flush=True)
        return 2
    if env is None:
        return 0
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the engine's stdin, as a cold engine has it
    os.close(devnull)
    from deployments.runtime.sandbox_entry import start_bridges

    if not start_bridges():
        return 1
    return run_engine(env)


if __name__ == "__main__":
    code = main()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)  # run_engine already ran the exit handlers and joined the threads
