"""When the supervisor stops a job, and how it notices the worker is gone.

Killing a job also kills every orphan the supervisor adopted, i.e. every other child of
the calling process: cases that kill run in a fresh interpreter, not in the test process
(whose children are the suite's stacks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

from deployments.runtime.stop import ParentWatch, RelayWatch, StopPolicy, describe_seconds
from dspy_service.contract import STOP_SIGNAL, WORKER_GONE_MESSAGE
from tests.support.fresh_interpreter import in_fresh_interpreter


class Watch:
    def __init__(self, gone: bool = False):
        self.gone = gone

    def worker_gone(self) -> bool:
        return self.gone


def test_a_warm_supervisor_sees_the_relay_go_as_eof():
    relay, held = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    watch = RelayWatch(held)
    assert not watch.worker_gone()
    relay.close()
    assert watch.worker_gone()
    held.close()


def test_a_cold_supervisor_sees_its_parent_change():
    assert not ParentWatch(os.getppid()).worker_gone()
    assert ParentWatch(os.getppid() + 1).worker_gone()


def a_job_over_its_time_gets_the_stop_signal_then_is_killed_after_the_grace() -> None:
    engine = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        policy = StopPolicy(Watch(), timeout=3600, grace=3600, max_tasks=512)
        policy.watch(engine, None)
        policy.limit_time(0.0)  # not a limit: ignored
        policy.limit_time(7200)  # more than the service allows: ignored
        policy.check()
        assert policy.stop is None
        policy.timeout = 0
        policy.check()
        assert policy.stop.kind == "timeout" and "time limit of 0 s" in policy.stop.reason
        assert engine.wait(10) == -STOP_SIGNAL  # `sleep` dies of the cooperative signal
        assert not policy.killed
        policy.deadline = 0  # the grace is over
        policy.check()
        assert policy.killed
    finally:
        engine.kill()
        engine.wait()


def test_a_job_over_its_time_gets_the_stop_signal_then_is_killed_after_the_grace():
    in_fresh_interpreter(a_job_over_its_time_gets_the_stop_signal_then_is_killed_after_the_grace)


def the_worker_going_kills_the_job_at_once_and_the_first_reason_wins() -> None:
    engine = subprocess.Popen(["sleep", "30"], start_new_session=True)
    policy = StopPolicy(Watch(gone=True), timeout=0, grace=3600, max_tasks=512)
    policy.watch(engine, None)
    policy.check()
    assert policy.stop.kind == "worker" and policy.stop.reason == WORKER_GONE_MESSAGE
    assert policy.killed
    assert engine.wait(10) in (-signal.SIGKILL, -STOP_SIGNAL)
    policy.on_terminate(signal.SIGTERM, None)
    assert policy.stop.kind == "worker"


def test_the_worker_going_kills_the_job_at_once_and_the_first_reason_wins():
    in_fresh_interpreter(the_worker_going_kills_the_job_at_once_and_the_first_reason_wins)


def test_the_worker_s_sigterm_is_a_cancel():
    policy = StopPolicy(Watch(), timeout=3600, grace=3600, max_tasks=512)
    policy.on_terminate(signal.SIGTERM, None)
    assert policy.stop.kind == "cancel" and "(SIGTERM; shutting down?)" in policy.stop.reason


def without_a_cgroup_too_many_processes_in_the_job_stop_it() -> None:
    engine = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & sleep 30 & wait"], start_new_session=True)
    try:
        policy = StopPolicy(Watch(), timeout=3600, grace=3600, max_tasks=8)  # fallback: > 8 // 8 processes
        policy.watch(engine, None)
        while policy.stop is None and engine.poll() is None:
            policy.check()
            time.sleep(0.01)
        assert policy.stop.kind == "tasks" and "more than 8 processes/threads" in policy.stop.reason
        assert policy.killed
    finally:
        engine.kill()
        engine.wait()


def test_without_a_cgroup_too_many_processes_in_the_job_stop_it():
    in_fresh_interpreter(without_a_cgroup_too_many_processes_in_the_job_stop_it)


def test_durations_read_like_a_person_says_them():
    assert describe_seconds(5) == "5 s"
    assert describe_seconds(90) == "1 min 30 s"
    assert describe_seconds(120) == "2 min"
    assert describe_seconds(3600) == "1 h"
    assert describe_seconds(6 * 3600 + 60) == "6 h 1 min"
