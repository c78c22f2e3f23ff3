"""Resource limits of one job's processes, and killing everything a job started.

Used by the job supervisor (supervisor.py) on Linux:

- rlimits for the engine process (inherited by anything it starts): address space
  (memory), CPU time (a backstop behind the wall-clock timeout), file size, open files,
  no core dumps; `confine_engine` applies them, with PR_SET_PDEATHSIG and the cgroup, in
  the engine child before it runs any job code;
- a per-job `pids` cgroup (v1 or v2, whichever this host lets us write) capping the
  processes + threads the job may run at once, so a fork bomb hits a wall instead of the
  host. Root ignores RLIMIT_NPROC, so without a writable cgroup the supervisor falls back
  to counting the job's processes (procfs.session_members) and killing the job when it
  runs away;
- `kill_job` kills the engine's process group, everything in the job's cgroup and any
  orphan the supervisor adopted as child subreaper.

Failures are tolerated, never raised: a limit the host refuses is left unset, a cgroup
that cannot be created is None (the process count fallback applies), a process that is
already gone is not killed again.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from deployments.runtime import procfs
from dspy_service.settings import ServiceSettings

MB = 1024 * 1024
CGROUP_PREFIX = "dspy-service-job-"

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

_libc = None


def prctl(option: int, value: int) -> bool:
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        return _libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux
        return False


@dataclass(frozen=True)
class JobLimits:
    memory_mb: int
    cpu_seconds: int
    max_file_mb: int
    max_open_files: int
    max_tasks: int
    nice: int = 0

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> JobLimits:
        return cls(
            memory_mb=settings.job_memory_mb,
            cpu_seconds=settings.job_cpu_seconds,
            max_file_mb=settings.job_max_file_mb,
            max_open_files=settings.job_max_open_files,
            max_tasks=settings.job_max_tasks,
            nice=settings.job_nice,
        )

    def apply(self, *, nproc: bool) -> None:
        """Set the rlimits of the calling process (the engine child, before exec)."""

        def set_limit(kind: int, soft: int, hard: int | None = None) -> None:
            _, current_hard = resource.getrlimit(kind)
            hard = soft if hard is None else hard
            if current_hard != resource.RLIM_INFINITY:
                soft, hard = min(soft, current_hard), min(hard, current_hard)
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(kind, (soft, hard))

        if self.memory_mb:
            set_limit(resource.RLIMIT_AS, self.memory_mb * MB)
        if self.cpu_seconds:
            # Soft limit: SIGXCPU (the supervisor reports it); hard limit: SIGKILL shortly after.
            set_limit(resource.RLIMIT_CPU, self.cpu_seconds, self.cpu_seconds + 10)
        if self.max_file_mb:
            set_limit(resource.RLIMIT_FSIZE, self.max_file_mb * MB)
        set_limit(resource.RLIMIT_NOFILE, self.max_open_files)
        set_limit(resource.RLIMIT_CORE, 0)
        if nproc:  # counts every process of the user, and root ignores it: a fallback only
            set_limit(resource.RLIMIT_NPROC, self.max_tasks)
        if self.nice:
            with contextlib.suppress(OSError):
                os.nice(self.nice)


class PidsCgroup:
    """A `pids` cgroup of one job, when this host lets the worker create one."""

    def __init__(self, path: Path, version: int):
        self.path = path
        self.version = version

    @classmethod
    def create(cls, name: str, max_tasks: int) -> PidsCgroup | None:
        for base, version in _pids_cgroup_bases():
            _remove_stale(base)
            path = base / f"{CGROUP_PREFIX}{name}"
            try:
                path.mkdir(exist_ok=True)
                (path / "pids.max").write_text(str(max_tasks))
            except OSError:
                with contextlib.suppress(OSError):
                    path.rmdir()
                continue
            return cls(path, version)
        return None

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def limit_hits(self) -> int:
        """How often a fork or thread start was refused for hitting pids.max."""
        try:
            for line in (self.path / "pids.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "max":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def block_new_tasks(self) -> None:
        with contextlib.suppress(OSError):
            (self.path / "pids.max").write_text("0")

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:  # busy for a moment after its last process exits
                time.sleep(0.02)


def _pids_cgroup_bases() -> list[tuple[Path, int]]:
    """Directories where a child pids cgroup could be created, most specific first."""
    own = procfs.own_cgroups()
    mounts = procfs.mount_lines()
    if own is None or mounts is None:
        return []
    bases: list[tuple[Path, int]] = []
    for mount in mounts:
        fields = mount.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        fstype, options = fields[sep + 1], fields[sep + 3] if len(fields) > sep + 3 else ""
        mount_point = Path(fields[4])
        if fstype == "cgroup" and "pids" in options.split(","):
            relative = next((p for c, p in own.items() if "pids" in c.split(",")), "/")
            bases.append((mount_point / relative.lstrip("/"), 1))
        elif fstype == "cgroup2":
            base = mount_point / own.get("", "/").lstrip("/")
            try:
                if "pids" in (base / "cgroup.controllers").read_text().split():
                    if "pids" not in (base / "cgroup.subtree_control").read_text().split():
                        (base / "cgroup.subtree_control").write_text("+pids")
                    bases.append((base, 2))
            except OSError:  # e.g. processes in a non-root cgroup: no controllers for children
                pass
    return bases


def _remove_stale(base: Path) -> None:
    """Empty job cgroups left by supervisors that were killed; busy ones refuse rmdir."""
    with contextlib.suppress(OSError):
        for path in base.glob(f"{CGROUP_PREFIX}*"):
            with contextlib.suppress(OSError):
                if not (path / "cgroup.procs").read_text().strip():
                    path.rmdir()


def kill_job(process_group: int, cgroup: PidsCgroup | None, *, exclude: int | None = None) -> None:
    """SIGKILL the engine's process group, its cgroup and orphans adopted by this process."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process_group, signal.SIGKILL)
    if cgroup is not None:
        cgroup.block_new_tasks()
        kill_until_none(cgroup.pids, rounds=200)
    me = os.getpid()
    kill_until_none(lambda: [pid for pid in procfs.children_of(me) if pid != exclude], rounds=5)


def kill_until_none(find: Callable[[], list[int]], rounds: int) -> None:
    """SIGKILL what `find` lists until it lists nothing (processes may still be forking)."""
    for _ in range(rounds):
        pids = find()
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)


def confine_engine(limits: JobLimits, cgroup: PidsCgroup | None, supervisor_pid: int) -> None:
    """In the engine child, before it runs any job code: die with the supervisor, join the
    job's cgroup, take the rlimits. No threads, no logging, no Python-level locks here (it
    runs between fork and exec)."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != supervisor_pid:  # the supervisor died before prctl took effect
        os._exit(137)
    if cgroup is not None:
        with contextlib.suppress(OSError):
            cgroup.add(os.getpid())
    limits.apply(nproc=cgroup is None)


def exited_children() -> Iterator[tuple[int, int]]:
    """(pid, wait status) of each child that has exited, collected now, without waiting
    for the others. waitpid(-1) takes any child: callers that wait for one particular
    child must have waited for it first, or it steals that child's exit code."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


def reap_children() -> None:
    """Collect exited adopted orphans so they do not linger as zombies (after the engine
    child has been waited for)."""
    for _ in exited_children():
        pass
