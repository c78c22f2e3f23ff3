"""The one reader of Linux's /proc for the job runtime, the tests and the benchmarks.

Stdlib only: the relay imports it. Every reader treats a process that vanished or that
we may not read as absent (None, or left out of a list), never as an error: processes
come and go between listing /proc and opening their files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

EXITED = frozenset({"Z", "X"})  # zombie (exited, not yet reaped) or dead
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # the unit of /proc/<pid>/stat's CPU times


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat we use (see proc(5))."""

    pid: int
    state: str
    ppid: int
    pgrp: int
    session: int
    start_ticks: int  # clock ticks after boot: with the pid, names one process of this boot

    @property
    def exited(self) -> bool:
        return self.state in EXITED


def _read_stat_fields(pid: int) -> tuple[str, list[bytes]] | None:
    """/proc/<pid>/stat as its command name and the fields after it (fields[0] is the state),
    or None if the process is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: it runs from the first '(' to the last ')'.
    head, close, tail = data.rpartition(b")")
    if not close or b"(" not in head:
        return None
    return head.partition(b"(")[2].decode(errors="replace"), tail.split()


def read_stat(pid: int) -> ProcStat | None:
    """/proc/<pid>/stat, or None if the process is gone or unreadable."""
    parsed = _read_stat_fields(pid)
    if parsed is None or len(parsed[1]) < 20:
        return None
    fields = parsed[1]
    return ProcStat(pid, fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]))


def boot_id() -> str | None:
    """This kernel's boot (changes on every reboot), or None if unreadable."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            return boot.read().strip() or None
    except OSError:
        return None


def pid_namespace() -> int | None:
    """The inode of this process's pid namespace: pids name processes only within one."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


@dataclass(frozen=True)
class CpuTimes:
    """A process's command name, parent and CPU seconds (user + system): its own and its
    reaped children's (children that exited and were waited for: cutime + cstime)."""

    pid: int
    comm: str
    ppid: int
    own: float
    reaped_children: float


def cpu_times(pid: int) -> CpuTimes | None:
    """From one read of /proc/<pid>/stat, or None if the process is gone or unreadable."""
    parsed = _read_stat_fields(pid)
    if parsed is None or len(parsed[1]) < 15:
        return None
    comm, fields = parsed
    # After the command name: fields[1] is the parent, fields[11:15] utime, stime, cutime,
    # cstime in clock ticks.
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return CpuTimes(
        pid,
        comm,
        int(fields[1]),
        (utime + stime) / CLOCK_TICKS,
        (cutime + cstime) / CLOCK_TICKS,
    )


def pids() -> list[int]:
    return [int(entry.name) for entry in os.scandir("/proc") if entry.name.isdigit()]


def live_processes() -> Iterator[ProcStat]:
    """Every process that has not exited."""
    for pid in pids():
        stat = read_stat(pid)
        if stat is not None and not stat.exited:
            yield stat


def process_gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie counts as gone) or does not exist."""
    stat = read_stat(pid)
    return stat is None or stat.exited


def read_comm(pid: int) -> str | None:
    """/proc/<pid>/comm (the command name), or None if the process is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as comm:
            return comm.read().decode(errors="replace").strip()
    except OSError:
        return None


def parent_of(pid: int) -> int | None:
    stat = read_stat(pid)
    return None if stat is None else stat.ppid


def session_members(session_id: int) -> list[int]:
    """Live processes of a session (the engine starts one; user subprocesses stay in it)."""
    return [stat.pid for stat in live_processes() if stat.session == session_id]


def children_of(parent: int) -> list[int]:
    """Live direct children of `parent` (including orphans it adopted as subreaper)."""
    return [stat.pid for stat in live_processes() if stat.ppid == parent]


def descendants_of(pid: int) -> list[int]:
    """Every live process below `pid`, breadth first."""
    tree: dict[int, list[int]] = {}
    for stat in live_processes():
        tree.setdefault(stat.ppid, []).append(stat.pid)
    found, todo = [], [pid]
    while todo:
        for child in tree.get(todo.pop(0), []):
            found.append(child)
            todo.append(child)
    return found


def open_fds() -> set[int]:
    """This process's open file descriptors."""
    return {int(name) for name in os.listdir("/proc/self/fd")}


def memory_mb(pid: int, kind: str = "rss") -> float | None:
    """Resident (`rss`, /proc/<pid>/status VmRSS) or proportional (`pss`, smaps_rollup:
    shared pages count split among their users) set size in MB."""
    file, field = {"rss": ("status", "VmRSS:"), "pss": ("smaps_rollup", "Pss:")}[kind]
    try:
        with open(f"/proc/{pid}/{file}") as lines:
            for line in lines:
                if line.startswith(field):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def environ_of(pid: int) -> list[bytes] | None:
    """The environment `pid` was exec'd with (NAME=value entries), or None if unreadable."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            return environ.read().split(b"\0")
    except OSError:
        return None


def cmdline_of(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None


def own_cgroups() -> dict[str, str] | None:
    """This process's cgroups (/proc/self/cgroup): controllers ("" for v2) -> path."""
    try:
        with open("/proc/self/cgroup") as lines:
            entries = [line.rstrip("\n").split(":", 2) for line in lines if line.strip()]
    except OSError:
        return None
    return {controllers: path for _, controllers, path in entries}


def mount_lines() -> list[str] | None:
    """The lines of /proc/self/mountinfo (see proc(5)), or None if unreadable."""
    try:
        with open("/proc/self/mountinfo") as mountinfo:
            return mountinfo.read().splitlines()
    except OSError:
        return None
