"""The processes of a dspy-service stack and the environment they share.

`dspy-service up` and the integration tests both start the stack through this module:
a Prefect server, the pools + deployments, worker(s), the webhook delivery worker (the
notify pool's: api/webhook_flow.py), the API and optionally the local LM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from deployments.prefect_auth import CLIENT_ENV as PREFECT_AUTH_ENV
from deployments.prefect_auth import ensure_auth_string, server_environment
from deployments.runtime.protocol import SOCKET_ENV as ZYGOTE_SOCKET_ENV
from deployments.runtime.protocol import socket_path as zygote_socket_path
from dspy_service.sandbox_check import startup_check
from dspy_service.serving_settings import program_server_token
from dspy_service.settings import ServiceSettings
from dspy_service.testing.real_lm.server import DEMO_PORT as REAL_MODEL_DEMO_PORT

# Settings the stack's processes need, measured to matter (README, "Configuration"); none for the DB (BENCHMARKS.md).
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no telemetry calls: there may be no network
    "PREFECT_WORKER_QUERY_SECONDS": "1",  # default 10 s: jobs would wait up to 10 s for pickup
    "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
    # Without it a run cancelled while PENDING hangs in Cancelling for ~300 s.
    "PREFECT_WORKER_ENABLE_CANCELLATION": "true",
    "PREFECT_WORKER_CANCELLATION_POLL_SECONDS": "5",
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
    # Prefect clients retry 429/502/503 only; a SQLite-backed server answers bursts of
    # writes with 500 "database is locked", which crashed job engines under load.
    "PREFECT_CLIENT_RETRY_EXTRA_CODES": "500",
    # Our server has no CSRF protection: each new client would first ask it for a token
    # (6 requests of a job's 54, bench/count_calls.py). True if the server enables CSRF.
    "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED": "false",
    # Logs of deleted runs are removed by the orphan vacuum (the API cannot delete logs).
    "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,orphans",
    "PREFECT_SERVER_SERVICES_DB_VACUUM_ORPHAN_CLEANUP_LOOP_SECONDS": "3600",
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "1",
    # Schedules (/schedules): keep the next 3 runs of each schedule ahead, not an hour's
    # worth (the default would create 100 pending jobs at once for a 10 s interval). The
    # worker starts a scheduled run this early (default 10 s), so pausing a schedule stops
    # its runs from about this many seconds on; it covers the job process start (~4 s).
    "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_SCHEDULED_TIME": "PT0S",
    "PREFECT_WORKER_PREFETCH_SECONDS": "5",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "PYTHONUNBUFFERED": "1",
}


@dataclass
class StackConfig:
    settings: ServiceSettings
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    prefect_port: int = 4200
    workers: int = 1
    local_lm_port: int | None = None  # start the local LM (test/demo tool) on this port
    local_lm_delay_ms: int = 0
    warm_start: bool | None = None  # default: settings.warm_start (DSPY_SERVICE_WARM_START)
    program_server_port: int | None = None  # default: the port of settings.program_server_url

    @property
    def uses_warm_start(self) -> bool:
        return self.settings.warm_start if self.warm_start is None else self.warm_start

    @property
    def prefect_api_url(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    @property
    def api_url(self) -> str:
        host = "127.0.0.1" if self.api_host in ("0.0.0.0", "::") else self.api_host
        return f"http://{host}:{self.api_port}"

    @property
    def program_server_url(self) -> str:
        host, port = self.settings.program_server_address
        return f"http://{host}:{self.program_server_port or port}"

    @property
    def local_lm_url(self) -> str | None:
        return f"http://127.0.0.1:{self.local_lm_port}/v1" if self.local_lm_port else None

    @property
    def egress_allow(self) -> str:
        """DSPY_SERVICE_EGRESS_ALLOW of the stack's processes: the operator's entries and the
        demo models' addresses (the local LM's, and where `demo --real-model` serves the real
        model), which jobs may then reach (dspy_service/egress_policy.py)."""
        entries = [entry.strip() for entry in self.settings.egress_allow.split(",") if entry.strip()]
        if self.local_lm_port:
            entries += [f"127.0.0.1:{self.local_lm_port}", f"127.0.0.1:{REAL_MODEL_DEMO_PORT}"]
        return ",".join(dict.fromkeys(entries))

    def environment(self) -> dict[str, str]:
        home = self.settings.home_dir
        env = dict(os.environ)
        for key, value in PREFECT_DEFAULTS.items():
            env.setdefault(key, value)
        # Short schedule intervals (tests, demos) need a scheduler loop at least as short.
        loop = self.settings.scheduler_loop_seconds
        env.setdefault("PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS", f"{loop:g}")
        env.setdefault("PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS", f"{min(loop, 5.0):g}")
        env.update(
            {
                "DSPY_SERVICE_HOME": str(home),
                "DSPY_SERVICE_WORK_POOL": self.settings.work_pool,
                "DSPY_SERVICE_DEPLOYMENT": self.settings.deployment,
                "DSPY_SERVICE_NOTIFY_WORK_POOL": self.settings.notify_work_pool,
                "DSPY_SERVICE_NOTIFY_DEPLOYMENT": self.settings.notify_deployment,
                "DSPY_SERVICE_JOB_SLOTS": str(self.settings.job_slots),
                "DSPY_SERVICE_SCHEDULER_LOOP_SECONDS": f"{self.settings.scheduler_loop_seconds:g}",
                "DSPY_SERVICE_AUTH": self.settings.auth,
                "DSPY_SERVICE_API_HOST": self.api_host,
                "DSPY_SERVICE_EGRESS_ALLOW": self.egress_allow,
                "DSPY_SERVICE_PROGRAM_SERVER_URL": self.program_server_url,
                "PREFECT_HOME": str(home / "prefect"),
                "PREFECT_API_URL": self.prefect_api_url,
                "PREFECT_API_DATABASE_CONNECTION_URL": self.settings.resolved_database_url,
            }
        )
        if self.settings.storage_url:
            env["DSPY_SERVICE_STORAGE_URL"] = self.settings.storage_url
        env["DSPY_SERVICE_SANDBOX"] = self.settings.sandbox
        if self.settings.dataset_dirs:
            env["DSPY_SERVICE_DATASET_DIRS"] = self.settings.dataset_dirs
        env["PATH"] = interpreter_first_on_path(env.get("PATH", ""))
        # Flow results; a storage block (PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK) overrides it.
        env["PREFECT_LOCAL_STORAGE_PATH"] = str(home / "storage" / "results")
        return env


def interpreter_first_on_path(path: str) -> str:
    """The deployment's job command is `python -m deployments.runtime.relay`; on a worker that
    `python` must be this interpreter (the one dspy-service is installed in)."""
    bin_dir = os.path.dirname(sys.executable)
    parts = [p for p in path.split(os.pathsep) if p and p != bin_dir]
    return os.pathsep.join([bin_dir, *parts])


@dataclass
class Component:
    name: str
    command: list[str]
    log_path: Path
    process: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)  # on top of the stack's environment
    scrub_env: bool = False  # only what a job may see (deployments/runtime/env.py)

    def start(self, env: dict[str, str]) -> None:
        env = {**env, **self.extra_env}
        if self.scrub_env:
            env = zygote_environment(env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        # A session of its own: Ctrl-C in the terminal reaches only the supervisor, which
        # then stops the components in order.
        self.process = subprocess.Popen(
            self.command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if not self.alive:
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


def python_command(*args: str) -> list[str]:
    return [sys.executable, *args]


def worker_component(name: str, pool: str, logs: Path) -> Component:
    """The job worker of `pool` (deployments/worker.py), named after this host."""
    host_name = f"{os.uname().nodename}-{name}"
    command = python_command("-m", "deployments.worker", "--pool", pool, "--name", host_name)
    return Component(name, command, logs / f"{name}.log")


def notify_worker_component(pool: str, logs: Path) -> Component:
    """Prefect's own process worker for the webhook deliveries (their latency does not matter)."""
    name = "notify-worker"
    command = python_command("-m", "prefect", "worker", "start", "--pool", pool, "--type", "process")
    command += ["--name", f"{os.uname().nodename}-{name}"]
    return Component(name, command, logs / f"{name}.log")


def zygote_command(socket_path: str) -> list[str]:
    return python_command("-u", "-m", "deployments.runtime.zygote", "--socket", socket_path)


def zygote_environment(env: dict[str, str]) -> dict[str, str]:
    """A zygote's jobs are forks of it: it gets only what a job may see (the scrubbed
    environment), so that no worker secret is in their memory or /proc/<pid>/environ."""
    from deployments.runtime.env import scrub_own_environment

    return scrub_own_environment(env)


def socket_connectable(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except OSError:
            return False
        return True


class Stack:
    """Start, watch and stop the stack's processes.

    The Prefect server listens on loopback only and requires the home's auth string
    (deployments/prefect_auth.py), which every other process of the stack sends."""

    def __init__(self, config: StackConfig):
        self.config = config
        self.prefect_auth = ensure_auth_string(config.settings.prefect_auth_file)
        self.env = {**config.environment(), PREFECT_AUTH_ENV: self.prefect_auth}
        logs = config.settings.home_dir / "logs"
        self.server = Component(
            "prefect-server",
            python_command(
                "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(config.prefect_port)
            ),
            logs / "prefect-server.log",
            extra_env=server_environment(self.prefect_auth, config.prefect_port),
        )
        self.workers = [
            worker_component(f"worker-{i + 1}", config.settings.work_pool, logs) for i in range(config.workers)
        ]
        # Webhook deliveries: trusted code of ours, on a pool of its own (deployments/register.py).
        self.notify_worker = notify_worker_component(config.settings.notify_work_pool, logs)
        # Warm start: one zygote per worker, started before it; the worker's jobs find it
        # through DSPY_SERVICE_ZYGOTE_SOCKET (deployments/runtime/zygote.py).
        self.zygotes: list[Component] = []
        if config.uses_warm_start:
            for i, worker in enumerate(self.workers):
                path = zygote_socket_path(config.settings.home_dir, f"worker-{i + 1}")
                worker.extra_env[ZYGOTE_SOCKET_ENV] = path
                self.zygotes.append(
                    Component(
                        f"zygote-{i + 1}", zygote_command(path), logs / f"zygote-{i + 1}.log", scrub_env=True
                    )
                )
        # Registered programs, each in a sandboxed process of its own (deployments/program_server/).
        self.program_server = Component(
            "program-server", python_command("-m", "deployments.program_server"), logs / "program-server.log"
        )
        self.api = Component(
            "api",
            python_command(
                "-m", "uvicorn", "api.main:app", "--host", config.api_host, "--port", str(config.api_port),
                "--log-level", "warning",
            ),
            logs / "api.log",
        )
        self.local_lm = (
            Component(
                "local-lm",
                python_command(
                    "-m", "dspy_service.testing.local_lm", "--port", str(config.local_lm_port),
                    "--delay-ms", str(config.local_lm_delay_ms),
                ),
                logs / "local-lm.log",
            )
            if config.local_lm_port
            else None
        )

    @property
    def components(self) -> list[Component]:
        extra = [self.local_lm] if self.local_lm else []
        return [*extra, self.server, *self.zygotes, *self.workers, self.notify_worker, self.program_server, self.api]

    def start(self, timeout: float = 120.0, progress=print) -> float:
        """Start everything; returns seconds until the API reports healthy."""
        started = time.monotonic()
        problem = self.config.settings.model_copy(update={"api_host": self.config.api_host}).auth_mode_problem()
        if problem:
            raise RuntimeError(problem)
        self.check_ports_free()
        error, warning = startup_check(self.config.settings.sandbox, self.config.settings.sandbox_uid)
        if error:
            raise RuntimeError(error)
        if warning:
            progress(f"warning: {warning}")
        self.config.settings.home_dir.mkdir(parents=True, exist_ok=True)
        if self.local_lm:
            self.local_lm.start(self.env)
        progress(f"starting Prefect server on {self.config.prefect_api_url} ...")
        self.server.start(self.env)
        # GET /api/health is the one Prefect route open without the auth string.
        wait_until(lambda: http_ok(f"{self.config.prefect_api_url}/health"), timeout, self.server)
        progress("registering work pool and deployment ...")
        self.register()
        for zygote in self.zygotes:
            zygote.start(self.env)
        for worker in self.workers:
            worker.start(self.env)
        self.notify_worker.start(self.env)
        program_server_token(self.config.settings, self.config.settings.home_dir)  # before either side reads it
        self.program_server.start(self.env)
        progress(f"starting API on {self.config.api_url} ...")
        self.api.start(self.env)
        wait_until(lambda: http_ok(f"{self.config.api_url}/health"), timeout, self.api, *self.workers)
        wait_until(lambda: http_ok(f"{self.config.program_server_url}/health"), timeout, self.program_server)
        if self.zygotes:
            progress("waiting for the warm-start zygotes ...")
            for zygote, worker in zip(self.zygotes, self.workers, strict=True):
                path = worker.extra_env[ZYGOTE_SOCKET_ENV]
                wait_until(lambda path=path: socket_connectable(path), timeout, zygote)
        return time.monotonic() - started

    def check_ports_free(self) -> None:
        """Another process on our ports would answer our health checks: refuse to start."""
        ports = {"Prefect server": self.config.prefect_port, "API": self.config.api_port,
                 "program server": int(self.config.program_server_url.rsplit(":", 1)[1])}
        if self.config.local_lm_port:
            ports["local LM"] = self.config.local_lm_port
        for name, port in ports.items():
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    raise RuntimeError(
                        f"port {port} for the {name} is already in use (another dspy-service or Prefect?); "
                        "choose another with --api-port / --prefect-port / --local-lm-port"
                    ) from None

    def register(self) -> None:
        """The pool, the deployment and its automations; then the first admin user and its
        token file (deployments/users_cli.py), in one process."""
        code = (
            "import asyncio; from deployments.register import register; asyncio.run(register()); "
            "from deployments.users_cli import create_first_admin; create_first_admin()"
        )
        subprocess.run(python_command("-c", code), env=self.env, check=True, timeout=120)

    def stop(self) -> None:
        """API first (no new jobs), then workers, then the server; finished runs are untouched."""
        for component in reversed(self.components):
            component.stop()

    def watch(self, should_stop, restart_limit: int = 5, progress=print) -> None:
        """Restart components that die (at most `restart_limit` per minute each)."""
        while not should_stop():
            for component in self.components:
                if component.alive:
                    continue
                now = time.monotonic()
                component.restarts = [t for t in component.restarts if now - t < 60] + [now]
                if len(component.restarts) > restart_limit:
                    raise RuntimeError(f"{component.name} keeps exiting; see {component.log_path}")
                progress(f"{component.name} exited (code {component.process.returncode}); restarting")
                component.start(self.env)
            time.sleep(0.5)


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(check, timeout: float, *components: Component) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        for component in components:
            if component.process is not None and component.process.poll() is not None:
                raise RuntimeError(
                    f"{component.name} exited with code {component.process.returncode}; see {component.log_path}"
                )
        time.sleep(0.25)
    raise TimeoutError(f"not ready after {timeout:.0f} s; see logs in {components[0].log_path.parent}")

