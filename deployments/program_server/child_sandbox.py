"""Where a program version's process runs: the job sandbox, or a plain subprocess.

`ChildSandbox` is the trusted side of one loaded program's sandbox, built from the job
runtime's primitives (deployments/runtime/): a private directory (`JobDirectory`), the
bubblewrap command and environment of `sandbox.py` (own user/pid/mount/network
namespaces, read-only system, Python and project code, nothing of the service home or
shared storage: the server hands the program's document over stdin), and an
`EgressProxy` on a Unix socket in `run/` that lets the process reach only its model's
host under the service's egress policy (`dspy_service/egress_policy.py`); each denial is
logged by the server. With DSPY_SERVICE_SANDBOX=off (as for jobs) `PlainChild` starts
the same command as a plain subprocess with the scrubbed job environment.

Both confine the process before exec like a job's engine (`limits.confine_engine`:
die with the server, rlimits; no CPU-time limit, a loaded program lives long).
Failures: `SandboxUnavailable` (bubblewrap missing or not permitted) from `prepare`;
OSError from the file system or a socket that cannot be bound.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from deployments.runtime.env import engine_environment
from deployments.runtime.limits import JobLimits, confine_engine
from deployments.runtime.sandbox import (
    EGRESS_SOCKET,
    JobDirectory,
    SandboxLayout,
    bwrap_command,
    hidden_inside_mounts,
    sandbox_environment,
)
from dspy_service.sandbox_check import cached_bubblewrap_problem
from dspy_service.schemas import ModelConfig
from dspy_service.settings import ServiceSettings

CHILD_MODULE = "deployments.program_server.child_main"
logger = logging.getLogger("dspy_service.program_server")


class SandboxUnavailable(RuntimeError):
    """No sandbox can start on this host; the message says how to fix it."""


class ModelHosts:
    """A served program's one model, shaped as `egress_policy.job_hosts` reads a JobSpec."""

    dataset_source = None

    def __init__(self, config: ModelConfig):
        self.config = config

    def lm_configs(self) -> dict[str, ModelConfig]:
        return {"main": self.config}

    def role_field(self, role: str) -> str:
        return "model_config"


def child_argv() -> list[str]:
    return [sys.executable, "-u", "-m", CHILD_MODULE]


def confiner(settings: ServiceSettings):
    """What runs in the child between fork and exec (see limits.confine_engine)."""
    limits = dataclasses.replace(JobLimits.from_settings(settings), cpu_seconds=0, nice=0)
    parent = os.getpid()
    return lambda: confine_engine(limits, None, parent)


class PlainChild:
    """DSPY_SERVICE_SANDBOX=off: the child as a plain subprocess."""

    sandboxed = False

    def __init__(self, settings: ServiceSettings, environ: Mapping[str, str]):
        self.settings = settings
        self.environ = environ

    def prepare(self, label: str, config: ModelConfig) -> None:
        pass

    def command(self) -> tuple[list[str], dict[str, str]]:
        return child_argv(), engine_environment(self.environ, self.settings.job_env_passthrough)

    def close(self) -> None:
        pass


class ChildSandbox:
    """One loaded program's bubblewrap sandbox, from `prepare` to `close`."""

    sandboxed = True

    def __init__(self, settings: ServiceSettings, environ: Mapping[str, str]):
        self.settings = settings
        self.environ = environ
        self.directory: JobDirectory | None = None
        self.layout: SandboxLayout | None = None
        self.proxy: Any = None

    def prepare(self, label: str, config: ModelConfig) -> None:
        from deployments.runtime.egress_proxy import EgressProxy
        from dspy_service.egress_policy import job_hosts

        problem = cached_bubblewrap_problem(self.settings.sandbox_uid)
        if problem:
            raise SandboxUnavailable(problem)
        self.directory = JobDirectory(self.settings.sandbox_dir, f"program-{label}")
        self.layout = SandboxLayout(job_dir=self.directory.path, uid=self.settings.sandbox_uid)
        self.layout.hidden = hidden_inside_mounts([self.settings.home_dir])

        def denied(message: str) -> None:
            logger.warning("program %s: %s", label, message)

        self.proxy = EgressProxy(
            self.layout.run_dir / EGRESS_SOCKET, self.settings.egress_policy, job_hosts(ModelHosts(config)), denied
        )
        self.proxy.start()

    def command(self) -> tuple[list[str], dict[str, str]]:
        assert self.layout is not None, "prepare() first"
        env = engine_environment(self.environ, self.settings.job_env_passthrough)
        return bwrap_command(self.layout, child_argv()), sandbox_environment(env)

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None
        if self.directory is not None:
            self.directory.remove()
            self.directory = None


def child_environment_for(settings: ServiceSettings, environ: Mapping[str, str]) -> PlainChild | ChildSandbox:
    return ChildSandbox(settings, environ) if settings.sandbox == "on" else PlainChild(settings, environ)
