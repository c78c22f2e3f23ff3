"""The job's engine in a bubblewrap sandbox: what it may see, and the command that starts it.

The engine (the process that imports and runs the user's signature and metric code) runs as
`bwrap <options> -- python -m deployments.runtime.sandbox_entry`, with

- its own user, pid, mount, network, ipc and uts namespaces (and cgroup, where the kernel
  allows): uid `sandbox_uid` with no capabilities, `--die-with-parent`, no process of the host
  visible, only a loopback interface;
- read-only: the system directories, a few files of /etc (certificates, users, time zone; not
  the host's secrets), the Python installation and virtual environment, and the project's
  packages; a fresh /proc, a minimal /dev and a private /tmp;
- read-write: its private work directory (`/job`, also HOME and the working directory) and the
  job-specific mounts the supervisor adds (`Mount`): its own result directory; read-only its
  own dataset;
- `/run/dspy`: the directory holding the Unix sockets of the supervisor's job-scoped Prefect
  and egress proxies and of its LM cache server, the only ways out of the sandbox
  (sandbox_entry.py bridges the proxies to loopback ports inside; the engine's LM cache,
  tasks/lm_cache_client.py, uses its socket directly, DSPY_SERVICE_LM_CACHE_SOCKET).

Nothing else of the service home, shared storage or the host is mounted. Whether bubblewrap
works on this host is dspy_service/sandbox_check.py's question; the supervisor refuses to start
a job without it (no silent fallback) unless the operator set DSPY_SERVICE_SANDBOX=off. Pure
apart from `JobDirectory`, which creates and removes the job's directory.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deployments.runtime.forwarder import proxy_environment
from dspy_service.contract import JOB_SECRETS_FILE_ENV, SANDBOXED_ENV
from dspy_service.lm_cache_protocol import LM_CACHE_SOCKET, LM_CACHE_SOCKET_ENV
from dspy_service.sandbox_check import BWRAP, namespace_arguments

SANDBOX_RUN_DIR = "/run/dspy"
SANDBOX_WORK_DIR = "/job"
PREFECT_SOCKET = "prefect.sock"
EGRESS_SOCKET = "egress.sock"
# Loopback ports inside the sandbox's own network namespace (no clash with the host's).
PREFECT_PORT = 4200
EGRESS_PORT = 3128
ENTRY_MODULE = "deployments.runtime.sandbox_entry"
JOB_SECRETS_FILE = "secrets.json"

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Of /etc only what a Python program needs to run and verify TLS; /etc/shadow and friends stay out.
ETC_ENTRIES = (
    "/etc/ssl", "/etc/ca-certificates", "/etc/pki", "/etc/passwd", "/etc/group", "/etc/hosts",
    "/etc/nsswitch.conf", "/etc/localtime", "/etc/timezone", "/etc/mime.types", "/etc/ld.so.cache",
    "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/os-release", "/etc/protocols",
    "/etc/services", "/etc/gai.conf", "/etc/fonts",
)
PROJECT_PACKAGES = ("flows", "tasks", "dspy_service", "deployments")

# What of the (already scrubbed, env.py) engine environment stays outside the sandbox: the
# engine reaches Prefect through the job-scoped proxy, without credentials, and never needs
# the database or the server's settings.
SANDBOX_DENIED_ENV = (
    "PREFECT_API_AUTH_STRING", "PREFECT_API_KEY", "PREFECT_API_DATABASE_*", "PREFECT_SERVER_*",
    "PREFECT_UI_*", "PREFECT_API_URL", "PREFECT_HOME", "PREFECT_PROFILES_PATH",
    "DSPY_SERVICE_DATABASE_URL", "DSPY_SERVICE_PREFECT_AUTH*", "*PASSWORD*", "*SECRET*", "*TOKEN*",
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy",
)


@dataclass(frozen=True)
class Mount:
    """A host path the job may use, at the same path inside the sandbox unless `target` says."""

    source: Path
    writable: bool = False
    target: Path | None = None

    @property
    def inside(self) -> Path:
        return self.target or self.source


@dataclass
class SandboxLayout:
    """Where one job's sandbox lives on the host and what it mounts besides the system."""

    job_dir: Path
    uid: int = 65534
    mounts: list[Mount] = field(default_factory=list)
    hidden: list[Path] = field(default_factory=list)  # host paths never visible, even under a mount

    @property
    def run_dir(self) -> Path:
        return self.job_dir / "run"

    @property
    def work_dir(self) -> Path:
        return self.job_dir / "work"

    @property
    def secrets_file(self) -> Path:
        return self.work_dir / JOB_SECRETS_FILE


def project_root() -> Path:
    return Path(__file__).resolve().parents[2]


def python_dirs() -> list[Path]:
    """The interpreter's installation and the virtual environment (resolved; the venv's
    `python` is a symlink into the installation)."""
    found: list[Path] = []
    for raw in (sys.base_prefix, sys.prefix):
        path = Path(raw).resolve()
        if not any(path == p or p in path.parents for p in found):
            found.append(path)
    return found


def read_only_dirs() -> list[Path]:
    """The host directories every sandbox mounts read-only (system, Python, project code)."""
    dirs = [Path(d) for d in SYSTEM_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    dirs += python_dirs()
    root = project_root()
    return dirs + [root / p for p in PROJECT_PACKAGES if (root / p).is_dir()]


def hidden_inside_mounts(paths: Sequence[Path]) -> list[Path]:
    """Those of `paths` (e.g. the service home) that lie inside a read-only mount, so the
    sandbox must cover them with an empty directory."""
    dirs = [d.resolve() for d in read_only_dirs()]
    hidden = []
    for path in paths:
        path = path.expanduser().resolve()
        if any(d == path or d in path.parents for d in dirs):
            hidden.append(path)
    return hidden


def _bind(flag: str, path: Path | str, target: Path | str | None = None) -> list[str]:
    return [flag, str(path), str(target or path)]


def system_arguments() -> list[str]:
    """Read-only system, Python and project mounts (what every job's sandbox has)."""
    args: list[str] = []
    for name in SYSTEM_DIRS:
        if os.path.islink(name):
            args += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            args += _bind("--ro-bind", name)
    for name in ETC_ENTRIES:
        if os.path.lexists(name):
            args += _bind("--ro-bind", name)
    for path in python_dirs():
        if not any(path == Path(d) or Path(d) in path.parents for d in SYSTEM_DIRS):
            args += _bind("--ro-bind", path)
    root = project_root()
    for package in PROJECT_PACKAGES:
        if (root / package).is_dir():
            args += _bind("--ro-bind", root / package)
    return args


def bwrap_command(layout: SandboxLayout, argv: Sequence[str]) -> list[str]:
    """The full command: namespaces, system mounts, private dirs, the job's mounts, `argv`."""
    # The private /tmp first: a Python or project directory under /tmp (a checkout there)
    # is then mounted into it, not hidden by it.
    args = [BWRAP, *namespace_arguments(layout.uid), "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    args += system_arguments()
    for hidden in layout.hidden:  # e.g. a service home that lies inside a mounted directory
        args += ["--tmpfs", str(hidden)]
    args += _bind("--bind", layout.work_dir, SANDBOX_WORK_DIR)
    args += _bind("--ro-bind", layout.run_dir, SANDBOX_RUN_DIR)
    for mount in layout.mounts:
        args += _bind("--bind" if mount.writable else "--ro-bind", mount.source, mount.inside)
    args += ["--chdir", SANDBOX_WORK_DIR, "--", *argv]
    return args


def entry_argv() -> list[str]:
    return [sys.executable, "-m", ENTRY_MODULE]


def sandbox_environment(engine_env: Mapping[str, str]) -> dict[str, str]:
    """The engine's environment inside: no Prefect credentials, no database URL; Prefect and
    the internet only through the bridged proxies."""
    env = {
        key: value
        for key, value in engine_env.items()
        if not any(fnmatch.fnmatchcase(key, pattern) for pattern in SANDBOX_DENIED_ENV)
    }
    proxy = f"http://127.0.0.1:{EGRESS_PORT}"
    prefect = f"127.0.0.1:{PREFECT_PORT}"
    env.update(
        {
            "PREFECT_API_URL": f"http://{prefect}/api",
            "PREFECT_HOME": f"{SANDBOX_WORK_DIR}/.prefect",
            "HOME": SANDBOX_WORK_DIR,
            "TMPDIR": "/tmp",
            SANDBOXED_ENV: "1",
            JOB_SECRETS_FILE_ENV: f"{SANDBOX_WORK_DIR}/{JOB_SECRETS_FILE}",
            LM_CACHE_SOCKET_ENV: f"{SANDBOX_RUN_DIR}/{LM_CACHE_SOCKET}",
        }
    )
    env.update(proxy_environment(proxy, f"{prefect},http://{prefect}"))
    return env


class JobDirectory:
    """The job's private directory on the host: `run/` for the proxies' and the LM cache
    server's sockets, `work/` for
    the engine. Created 0700 under `base`; removed (with what the job wrote) by `remove`."""

    def __init__(self, base: Path | None, name: str):
        root = base or Path(tempfile.gettempdir()) / "dspy-service-jobs"
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = Path(tempfile.mkdtemp(prefix=f"{name[:36]}-", dir=root))
        (self.path / "run").mkdir(mode=0o700)
        (self.path / "work").mkdir(mode=0o700)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            shutil.rmtree(self.path)
