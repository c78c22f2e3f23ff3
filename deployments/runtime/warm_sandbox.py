"""A job's sandbox started before its job: bubblewrap up, the engine's imports done, waiting.

A warm slot (warm_slots.py) creates one `WarmSandbox` while it waits for a job. It is the
cold sandbox of job_sandbox.py minus everything that depends on the job, which a sandbox
cannot gain once bubblewrap has set up its mounts:

- mounted as for every job: the system, Python, the project's packages, a private /tmp, the
  slot's own work directory at `/job` and run directory at `/run/dspy` (the proxies' sockets
  appear there once the job's supervisor starts them), and a fresh, empty result directory
  `<results>/.warm-<owner>-*` at `<results>`, renamed to the job's `<results>/<flow run id>`
  when the job arrives (`claim`; the mount follows the directory). `<owner>` names the
  zygote (host, boot, pid and start time: staged_results.py), so that a zygote starting
  after its host died can sweep what the dead one staged;
- not mounted: the job's inputs, which the supervisor copies into `/job/inputs`
  (job_sandbox.py, dspy_service/sandbox_inputs.py); its tenant's LM cache, which the engine
  reaches through the supervisor's socket like every sandboxed job.

Inside runs `python -m deployments.runtime.warm_entry`: it imports Prefect, DSPy and the
flows (only the project's own code: nothing of a job has been seen), then blocks reading
one line from stdin. `go(env)` writes the job's engine environment there; EOF instead
(`retire`) makes it exit without running anything. A sandbox serves one job only: after
it the slot process ends, and the zygote starts a fresh slot.

The sandbox runs under the same confinement as a cold job's engine (`confine_engine`: dies
with this process, the slot's pids cgroup, the job rlimits) from its start, so its imports
count toward the job's CPU limit (about 2 CPU-seconds). Failures: starting bubblewrap
raises OSError, `SandboxUnavailable` or `JobError` (job_sandbox.py: no sandbox on this
host, results in a storage block) after removing what it had created (staged directory,
job directory, cgroup), and the slot gives up (its jobs start cold); a sandbox that died
while waiting shows as `alive() == False`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from deployments.runtime.engine import Confine, spawn_engine
from deployments.runtime.env import engine_environment
from deployments.runtime.job_sandbox import (
    SandboxedEngine,
    SandboxStarter,
    SandboxUnavailable,
    engine_process,
    results_root,
)
from deployments.runtime.limits import JobLimits, PidsCgroup, confine_engine
from deployments.runtime.sandbox import (
    JobDirectory,
    Mount,
    SandboxLayout,
    bwrap_command,
    hidden_inside_mounts,
    sandbox_environment,
)
from deployments.runtime.staged_results import STAGED_RESULTS_PREFIX, Owner
from dspy_service.sandbox_check import cached_bubblewrap_problem
from dspy_service.settings import ServiceSettings

WARM_ENTRY_MODULE = "deployments.runtime.warm_entry"


class WarmSandbox:
    """One pre-started sandbox, owned by the process that created it (its supervisor-to-be)."""

    def __init__(self, settings: ServiceSettings, environ: Mapping[str, str], zygote: int | None = None):
        """`zygote`: the process whose slots stage results here (default: our parent, as a
        slot is the zygote's fork)."""
        problem = cached_bubblewrap_problem(settings.sandbox_uid)
        if problem:
            raise SandboxUnavailable(problem)
        self.results = results_root(environ)
        self.results.mkdir(parents=True, exist_ok=True)
        owner = Owner.of(os.getppid() if zygote is None else zygote)
        prefix = owner.prefix() if owner is not None else STAGED_RESULTS_PREFIX  # unnamed: never swept
        self.staged_results: Path | None = Path(tempfile.mkdtemp(prefix=prefix, dir=self.results))
        self.directory: JobDirectory | None = None
        self.cgroup: PidsCgroup | None = None
        try:
            self.start(settings, environ)
        except BaseException:
            self.remove()
            raise

    def start(self, settings: ServiceSettings, environ: Mapping[str, str]) -> None:
        assert self.staged_results is not None
        self.directory = JobDirectory(settings.sandbox_dir, "warm")
        self.layout = SandboxLayout(job_dir=self.directory.path, uid=settings.sandbox_uid)
        self.layout.mounts.append(Mount(self.staged_results, writable=True, target=self.results))
        self.layout.hidden = hidden_inside_mounts([settings.home_dir])
        limits = JobLimits.from_settings(settings)
        self.cgroup = PidsCgroup.create(f"warm-{os.getpid()}", limits.max_tasks)
        supervisor = os.getpid()
        confine: Confine = lambda: confine_engine(limits, self.cgroup, supervisor)  # noqa: E731
        env = sandbox_environment(engine_environment(environ, settings.job_env_passthrough))
        argv = bwrap_command(self.layout, [sys.executable, "-m", WARM_ENTRY_MODULE])
        self.process = spawn_engine(argv, env, confine, stdin=subprocess.PIPE)
        self.engine_pid = engine_process(self.process.pid)
        self.used = False

    def alive(self) -> bool:
        return self.process.poll() is None

    def claim(self, flow_run_id: str) -> bool:
        """Make the staged result directory the job's own; False when the job already has
        one (a run started again), which a warm sandbox cannot mount: start it cold."""
        assert self.staged_results is not None
        try:
            os.rename(self.staged_results, self.results / flow_run_id)
        except OSError:
            return False
        self.staged_results = None
        return True

    def go(self, env: Mapping[str, str]) -> SandboxedEngine:
        """Hand the waiting engine its job's environment (already the sandbox's): it runs now."""
        assert not self.used, "a warm sandbox runs one job"
        self.used = True
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(dict(env)).encode() + b"\n")
        self.process.stdin.close()
        return SandboxedEngine(self.process, self.engine_pid)

    def starter(self, extra_env: Mapping[str, str]) -> WarmStarter:
        return WarmStarter(self, self.layout, extra_env)

    def retire(self) -> None:
        """Unused: let the waiting engine exit, and remove what the slot created."""
        with contextlib.suppress(OSError, ValueError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.remove()

    def remove(self) -> None:
        """Remove what this sandbox created on the host (its engine has exited)."""
        if self.staged_results is not None:
            with contextlib.suppress(OSError):
                self.staged_results.rmdir()
        if self.directory is not None:
            self.directory.remove()
        if self.cgroup is not None:
            self.cgroup.remove()


class WarmStarter:
    """The supervisor's starter for a job in a warm sandbox: the first engine is the waiting
    one; a second attempt (supervisor.RestartPolicy) starts cold in the same layout."""

    verb = "started warm sandboxed"

    def __init__(self, warm: WarmSandbox, layout: SandboxLayout, extra_env: Mapping[str, str]):
        self.warm: WarmSandbox | None = warm
        self.cold = SandboxStarter(layout, extra_env)
        self.cgroup: PidsCgroup | None = warm.cgroup

    def start(self, env: Mapping[str, str], confine: Confine) -> SandboxedEngine:
        warm, self.warm = self.warm, None
        self.cgroup = None  # the supervisor removes it after this engine; a restart makes its own
        if warm is None:
            self.verb = self.cold.verb
            return self.cold.start(env, confine)
        return warm.go(self.cold.environment(env))
