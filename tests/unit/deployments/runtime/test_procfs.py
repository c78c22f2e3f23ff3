"""The /proc reader on real processes: a child we start, while it runs and once it exits."""

from __future__ import annotations

import os
import subprocess

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
