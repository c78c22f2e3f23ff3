"""The trusted side of one job's sandbox: what the supervisor prepares before the engine starts.

`JobSandbox.prepare(run)` reads what it needs from the job's flow run as the Prefect API
returned it to the supervisor (parameters, deployment, flow, schedule), then

- creates the job's private directory (sandbox.JobDirectory), or takes over the one of the
  warm sandbox its slot started before the job (warm_sandbox.py: `claim` renames that
  sandbox's staged result directory to the job's);
- reads the Secret blocks the job's model configs reference and hands them to the engine in
  `work/secrets.json` (the engine never sees a Prefect credential, so it cannot read blocks);
- mounts only the job's own data: its stored dataset (and a batch job's stored program
  version) and a `dataset_source` file read-only, its result directory
  `<results>/<flow run id>` read-write at `<results>`; a warm sandbox cannot gain mounts,
  so there the input files are copied into `/job/inputs` and the engine told where
  (dspy_service/sandbox_inputs.py);
- starts the job-scoped Prefect proxy, the egress proxy and (LM caching on) the LM cache
  server on Unix sockets in `run/`. The cache server serves the one tenant scope directory
  computed here from the job's resolved secrets (dspy_service/lm_cache.py,
  lm_cache_server.py); the directory itself is never mounted.

`SandboxStarter` then starts the engine as `bwrap ... python -m deployments.runtime.sandbox_entry`
(a warm sandbox's `WarmStarter` hands the waiting engine its environment instead)
behind the supervisor's `Engine` interface: `pid` is the engine's host pid inside the sandbox
(where the stop signal goes), `poll`/`wait` are bubblewrap's, whose exit code is the engine's
(128 + N when signal N killed it, turned back into -N here). `close()` stops the proxies and
removes the directory.

Failures: `SandboxUnavailable` (bubblewrap missing or not permitted; the message says how to
fix it) and `JobError` (a dataset or result location a sandbox cannot mount) end the job
with that message before any job code runs; OSError from the file system propagates. An
LM cache server that cannot start is written to the job's log and the job runs uncached.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from deployments.runtime import procfs
from deployments.runtime.engine import Confine, EngineStarter, spawn_engine
from deployments.runtime.sandbox import (
    EGRESS_SOCKET,
    PREFECT_SOCKET,
    SANDBOX_WORK_DIR,
    JobDirectory,
    Mount,
    SandboxLayout,
    bwrap_command,
    entry_argv,
    hidden_inside_mounts,
    sandbox_environment,
)
from dspy_service.dataset_source import file_source_problem
from dspy_service.errors import JobError
from dspy_service.sandbox_check import cached_bubblewrap_problem
from dspy_service.sandbox_inputs import SANDBOX_INPUTS_ENV
from dspy_service.settings import ServiceSettings

RESULTS_ENV = "PREFECT_LOCAL_STORAGE_PATH"
RESULT_BLOCK_ENV = "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"


class SandboxUnavailable(RuntimeError):
    """No sandbox can start on this host; the message says how to fix it."""


class PreStarted(Protocol):
    """A sandbox started before its job (warm_sandbox.WarmSandbox), as a job's sandbox uses it."""

    directory: JobDirectory
    layout: SandboxLayout
    used: bool

    def claim(self, flow_run_id: str) -> bool: ...

    def retire(self) -> None: ...

    def starter(self, extra_env: Mapping[str, str]) -> EngineStarter: ...


class Proxy(Protocol):
    def start(self) -> None: ...

    def close(self) -> None: ...


def local_path(url: str | None) -> Path | None:
    """The file path of a local fsspec URL or path; None for a remote one."""
    if not url:
        return None
    parsed = urlparse(url)
    if parsed.scheme in ("", "file") and parsed.path.startswith("/"):
        return Path(parsed.path)
    return None


def results_root(environ: Mapping[str, str]) -> Path:
    if environ.get(RESULT_BLOCK_ENV):
        raise JobError(
            "a sandboxed job writes its result to a file system path (PREFECT_LOCAL_STORAGE_PATH); "
            f"{RESULT_BLOCK_ENV} names a storage block, which a sandbox cannot mount"
        )
    raw = environ.get(RESULTS_ENV) or str(Path(environ.get("PREFECT_HOME", "~/.prefect")) / "storage")
    return Path(raw).expanduser()


class JobSandbox:
    """One job's sandbox, from `prepare` (once per job) to `close`."""

    def __init__(
        self,
        settings: ServiceSettings,
        environ: Mapping[str, str],
        flow_run_id: str,
        on_denied: Callable[[str], None],
        read_block: Callable[[str], dict[str, Any] | None],
        warm: PreStarted | None = None,
    ):
        self.warm = warm  # a sandbox started before the job (warm_sandbox.py), if the slot had one
        self.inputs: dict[str, str] = {}  # a warm sandbox's copied inputs: name in the job -> path inside
        self.settings = settings
        self.read_block = read_block
        self.environ = environ
        self.flow_run_id = flow_run_id
        self.on_denied = on_denied
        self.directory: JobDirectory | None = None
        self.layout: SandboxLayout | None = None
        self.proxies: list[Proxy] = []

    def prepare(self, run: dict[str, Any]) -> None:
        problem = cached_bubblewrap_problem(self.settings.sandbox_uid)
        if problem:
            raise SandboxUnavailable(problem)
        from dspy_service.batch_spec import run_spec
        from dspy_service.lm_cache import tenant_cache_dir
        from dspy_service.secrets import handed_blocks, resolve_model_secrets

        parameters = run.get("parameters") or {}
        spec = run_spec(parameters)  # an optimization job's JobSpec or a batch job's BatchSpec
        handed = handed_blocks(spec, self.read_block)
        try:
            cache = tenant_cache_dir(resolve_model_secrets(spec, handed.get), self.settings)
        except JobError:  # e.g. a deleted credential: the engine fails on it where it builds its LMs
            cache = None
        layout = self.claim_warm() or self.new_layout()
        layout.secrets_file.write_text(json.dumps(handed))
        os.chmod(layout.secrets_file, 0o600)
        for name, host_file in self.input_files(parameters, spec):
            self.hand_input(layout, name, host_file)
        self.layout = layout
        self.start_proxies(run, spec, cache)

    def retire_warm(self) -> None:
        if self.warm is not None:
            self.warm.retire()
            self.warm = None

    def claim_warm(self) -> SandboxLayout | None:
        """The warm sandbox's layout, its result directory now the job's; None without one."""
        if self.warm is not None and not self.warm.claim(self.flow_run_id):
            self.retire_warm()
        if self.warm is None:
            return None
        self.directory = self.warm.directory
        return self.warm.layout

    def new_layout(self) -> SandboxLayout:
        """A cold sandbox's layout: a new job directory, the job's result directory mounted."""
        self.directory = JobDirectory(self.settings.sandbox_dir, self.flow_run_id)
        layout = SandboxLayout(job_dir=self.directory.path, uid=self.settings.sandbox_uid)
        results = results_root(self.environ)
        own_results = results / self.flow_run_id
        own_results.mkdir(parents=True, exist_ok=True)
        layout.mounts.append(Mount(own_results, writable=True, target=results))
        layout.hidden = hidden_inside_mounts([self.settings.home_dir])
        return layout

    def input_files(self, parameters: dict[str, Any], spec: Any) -> list[tuple[str, Path]]:
        """The job's input files on this host: (the URL or path as the job names it, the file).
        Its stored dataset, a batch job's stored program version, a `dataset_source` file."""
        from dspy_service.schemas import DatasetRef

        found: list[tuple[str, Path]] = []
        for key in ("dataset_ref", "program_ref"):
            ref = parameters.get(key)
            url = DatasetRef.model_validate(ref).url if ref else None
            stored = local_path(url)
            if url and stored is not None and stored.is_file():
                found.append((url, stored))
        source = local_path(spec.dataset_source)
        if source is not None:
            problem = file_source_problem(str(source), self.settings.dataset_dirs, [str(self.settings.home_dir)])
            if problem:
                raise JobError(f"dataset_source: {problem}", field="dataset_source")
            if source.is_file():
                found.append((spec.dataset_source, source))
        return found

    def hand_input(self, layout: SandboxLayout, name: str, host_file: Path) -> None:
        """Mount an input file read-only at its own path (cold), or copy it into the warm
        sandbox's work directory (`/job/inputs`, dspy_service/sandbox_inputs.py)."""
        real = Path(os.path.realpath(host_file))
        if self.warm is None:
            layout.mounts.append(Mount(real, target=host_file))
            return
        inputs = layout.work_dir / "inputs"
        inputs.mkdir(mode=0o700, exist_ok=True)
        copy = inputs / f"{len(self.inputs)}-{host_file.name}"
        shutil.copyfile(real, copy)
        self.inputs[name] = f"{SANDBOX_WORK_DIR}/inputs/{copy.name}"

    def start_proxies(self, run: dict[str, Any], spec: Any, cache: Path | None = None) -> None:
        from deployments.prefect_auth import auth_headers
        from deployments.runtime.egress_proxy import EgressProxy
        from deployments.runtime.lm_cache_server import LmCacheServer
        from deployments.runtime.prefect_proxy import PrefectProxy
        from deployments.runtime.prefect_scope import JobScope
        from dspy_service.egress_policy import job_hosts
        from dspy_service.lm_cache_protocol import LM_CACHE_SOCKET

        assert self.layout is not None
        scope = JobScope.of_flow_run(run)
        self.proxies = [
            PrefectProxy(
                self.layout.run_dir / PREFECT_SOCKET,
                self.environ["PREFECT_API_URL"],
                auth_headers(auth) if (auth := self.environ.get("PREFECT_API_AUTH_STRING")) else {},
                scope,
                self.on_denied,
            ),
            EgressProxy(
                self.layout.run_dir / EGRESS_SOCKET,
                self.settings.egress_policy,
                job_hosts(spec),
                self.on_denied,
            ),
        ]
        for proxy in self.proxies:
            proxy.start()
        if cache is not None:
            server = LmCacheServer(
                self.layout.run_dir / LM_CACHE_SOCKET,
                cache,
                max_entry_bytes=self.settings.lm_cache_entry_bytes,
                size_limit_bytes=self.settings.lm_cache_scope_bytes,
            )
            try:  # without it the engine's calls are cache misses, never failures
                self.proxies.append(server.start())
            except (OSError, RuntimeError) as exc:
                self.on_denied(f"sandbox: LM cache server not started ({exc}); this job's LM calls are not cached")

    def starter(self) -> EngineStarter:
        assert self.layout is not None, "prepare() first"
        extra_env = {SANDBOX_INPUTS_ENV: json.dumps(self.inputs)} if self.inputs else {}
        if self.warm is not None:
            return self.warm.starter(extra_env)
        return SandboxStarter(self.layout, extra_env)

    def close(self) -> None:
        if self.warm is not None and not self.warm.used:  # prepared, but the job never started
            self.retire_warm()
        for proxy in self.proxies:
            proxy.close()
        self.proxies = []
        if self.directory is not None:
            self.directory.remove()


class SandboxedEngine:
    """The engine inside bubblewrap, as the supervisor's `Engine`."""

    def __init__(self, process: subprocess.Popen, pid: int):
        self.process = process
        self.pid = pid
        self.session = process.pid  # bubblewrap leads the job's session; the engine is in it
        self.stdout = process.stdout

    def _code(self, code: int | None) -> int | None:
        if code is not None and code > 128 and code - 128 < signal.NSIG:
            return 128 - code  # bubblewrap's 128 + N for an engine killed by signal N
        return code

    def poll(self) -> int | None:
        return self._code(self.process.poll())

    def wait(self) -> int:
        code = self._code(self.process.wait())
        assert code is not None
        return code


class SandboxStarter:
    verb = "started sandboxed"
    cgroup = None

    def __init__(self, layout: SandboxLayout, extra_env: Mapping[str, str] | None = None):
        self.layout = layout
        self.extra_env = dict(extra_env or {})

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """The engine's environment inside the sandbox: `env` as sandbox_environment keeps it,
        plus this job's own variables (its input copies)."""
        return sandbox_environment({**env, **self.extra_env})

    def start(self, env: Mapping[str, str], confine: Confine) -> SandboxedEngine:
        process = spawn_engine(bwrap_command(self.layout, entry_argv()), self.environment(env), confine)
        return SandboxedEngine(process, engine_process(process.pid))


def engine_process(bwrap_pid: int, timeout: float = 5.0) -> int:
    """The host pid of the engine: bubblewrap's child is the sandbox's init, whose child is
    the engine. Falls back to bubblewrap's pid (signals then end the sandbox at once)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for init in procfs.children_of(bwrap_pid):
            children = procfs.children_of(init)
            if children:
                return children[0]
        if procfs.process_gone(bwrap_pid):
            break
        time.sleep(0.005)
    return bwrap_pid

