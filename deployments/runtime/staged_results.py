"""Warm sandboxes' staged result directories: whose they are, and sweeping the orphans.

A warm sandbox (warm_sandbox.py) mounts a fresh, empty `<results>/.warm-<owner>-<random>`
before its job is known and renames it to the job's `<results>/<flow run id>` when the job
arrives. Its slot removes it when retired; a host that dies outright (power, kernel, OOM
of the whole machine) leaves it behind. Results storage may be shared by the workers of
several hosts, so the name says who owns it: the host name, its boot, its pid namespace,
and the pid and start time of the zygote whose slot staged it.

`sweep` (run by each zygote when it starts) removes only what is provably orphaned: a
directory staged on this host, either in an earlier boot (every process of that boot is
gone) or in this boot and pid namespace by a zygote that is no longer running (its pid is
gone or now names a process that started at another time). Directories of other hosts, of
other pid namespaces of this boot (another container), or with a name this module did not
write are left alone. Only empty directories are removed (rmdir): a directory a job wrote
into is never deleted. Unreadable /proc facts mean nothing is swept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from deployments.runtime import procfs

STAGED_RESULTS_PREFIX = ".warm-"
SEPARATOR = "+"  # never in a host name, a boot id or a number


@dataclass(frozen=True)
class Owner:
    """The zygote a staged directory belongs to, where pids and boots mean something."""

    host: str
    boot: str
    pid_namespace: int
    pid: int
    start_ticks: int

    @classmethod
    def of(cls, zygote: int) -> Owner | None:
        """The owner `zygote` (a live pid) is; None when /proc does not tell."""
        boot, namespace, stat = procfs.boot_id(), procfs.pid_namespace(), procfs.read_stat(zygote)
        if boot is None or namespace is None or stat is None:
            return None
        return cls(os.uname().nodename, boot, namespace, zygote, stat.start_ticks)

    def prefix(self) -> str:
        """The staged directory's name up to its random part (tempfile.mkdtemp's prefix)."""
        fields = (self.host, self.boot, str(self.pid_namespace), str(self.pid), str(self.start_ticks))
        return f"{STAGED_RESULTS_PREFIX}{SEPARATOR.join(fields)}-"

    @classmethod
    def parse(cls, name: str) -> Owner | None:
        owner, _, random = name.removeprefix(STAGED_RESULTS_PREFIX).rpartition("-")
        if not name.startswith(STAGED_RESULTS_PREFIX) or not owner or not random:
            return None
        fields = owner.split(SEPARATOR)
        if len(fields) != 5 or not all(field.isdigit() for field in fields[2:]):
            return None
        host, boot, namespace, pid, start = fields
        return cls(host, boot, int(namespace), int(pid), int(start))

    def gone(self, here: Owner | None) -> bool:
        """True only when this owner provably runs no more, seen from `here` (this process's
        own Owner; None when /proc does not tell: nothing is provably gone)."""
        if here is None or self.host != here.host:
            return False
        if self.boot != here.boot:
            return True  # staged in an earlier boot of this host
        if self.pid_namespace != here.pid_namespace:
            return False  # another container's pids: not ours to judge
        stat = procfs.read_stat(self.pid)
        return stat is None or stat.exited or stat.start_ticks != self.start_ticks


def sweep(results: Path) -> list[Path]:
    """Remove the empty staged directories under `results` whose zygote is provably gone."""
    removed = []
    here = Owner.of(os.getpid())
    for entry in results.glob(f"{STAGED_RESULTS_PREFIX}*"):
        owner = Owner.parse(entry.name)
        if owner is None or not owner.gone(here):
            continue
        try:
            entry.rmdir()
        except OSError:
            continue  # not empty, or gone already
        removed.append(entry)
    return removed
