"""The /proc reader on real processes: a child we start, while it runs and once it exits."""

from __future__ import annotations

import os
import subprocess
import time

from deployments.runtime import procfs


def test_a_running_child_shows_its_parent_and_session():
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        stat = procfs.read_stat(child.pid)
        assert stat is not None and not stat.exited
        assert stat.ppid == os.getpid() == procfs.parent_of(child.pid)
        assert stat.session == stat.pgrp == child.pid  # a session of its own
        assert procfs.session_members(child.pid) == [child.pid]
        assert child.pid in procfs.children_of(os.getpid())
        assert child.pid in procfs.descendants_of(os.getpid())
        assert "sleep 30" in procfs.cmdline_of(child.pid)
        assert not procfs.process_gone(child.pid)
    finally:
        child.kill()
        child.wait()


def test_an_exited_child_is_gone_as_a_zombie_and_after_it_is_reaped():
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    child.kill()
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
    assert procfs.read_stat(child.pid).state == "Z"
    assert procfs.process_gone(child.pid)
    assert child.pid not in procfs.children_of(os.getpid())
    assert procfs.session_members(child.pid) == []
    child.wait()
    assert procfs.read_stat(child.pid) is None and procfs.process_gone(child.pid)
    assert procfs.parent_of(child.pid) is None and procfs.cmdline_of(child.pid) is None


def test_own_process_readers():
    read, write = os.pipe()
    try:
        assert {read, write} <= procfs.open_fds()
    finally:
        os.close(read)
        os.close(write)
    assert procfs.memory_mb(os.getpid()) > 0
    assert procfs.environ_of(os.getpid()) is not None
    assert procfs.own_cgroups()  # every Linux process is in at least one cgroup
    assert any(" - proc " in line for line in procfs.mount_lines())


def test_cpu_times_count_a_process_and_the_children_it_reaped():
    burn = "import sys, time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\nsys.stdin.read()"
    child = subprocess.Popen(["python3", "-c", burn], stdin=subprocess.PIPE)
    try:
        before = procfs.cpu_times(os.getpid())
        deadline = time.monotonic() + 10
        while (times := procfs.cpu_times(child.pid)).own < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert times.ppid == os.getpid() and times.comm.startswith("python")
        assert times.own >= 0.25, "the child's own CPU seconds"
    finally:
        child.communicate(b"", timeout=10)
    after = procfs.cpu_times(os.getpid())
    assert after.reaped_children - before.reaped_children >= 0.25, "once reaped, its time is its parent's"
    assert procfs.cpu_times(child.pid) is None
