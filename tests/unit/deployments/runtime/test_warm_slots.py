"""Warm slots and warm sandboxes: the zygote's pool of idle slots, the job hand-off's
descriptors, a real warm sandbox's life without a job (staged result directory, claim,
retire), the engine's input copies and the warm entry's hand-off line."""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import time

import pytest

from deployments.runtime import procfs, warm_sandbox, warm_slots
from deployments.runtime.protocol import recv_request
from deployments.runtime.staged_results import Owner
from deployments.runtime.warm_entry import read_job_environment
from deployments.runtime.warm_sandbox import WarmSandbox
from deployments.runtime.warm_slots import SlotPool, hand_off_fds
from dspy_service.sandbox_check import bubblewrap_problem
from dspy_service.sandbox_inputs import SANDBOX_INPUTS_ENV, readable_path
from dspy_service.settings import ServiceSettings


class FakeSlots:
    """fork_slot for a SlotPool: keeps the slot's end of each pair instead of forking."""

    def __init__(self):
        self.ends: dict[int, socket.socket] = {}

    def __call__(self, theirs: socket.socket) -> int:
        pid = 1000 + len(self.ends)
        self.ends[pid] = socket.socket(fileno=os.dup(theirs.fileno()))
        return pid


def test_the_pool_hands_a_job_with_stdio_and_connection_to_an_idle_slot():
    slots = FakeSlots()
    pool = SlotPool(2, slots, log=lambda _: None)
    pool.fill()
    assert [slot.pid for slot in pool.idle] == [1000, 1001]
    relay, other = socket.socketpair()
    read, write = os.pipe()
    try:
        pid = pool.hand({"env": {"A": "1"}, "argv": ["-m"]}, hand_off_fds(relay, [read, write, write]))
        assert pid == 1000 and [slot.pid for slot in pool.idle] == [1001]
        request, fds = recv_request(slots.ends[1000], max_fds=4)
        assert request["env"] == {"A": "1"} and len(fds) == 4
        socket.socket(fileno=fds[3]).sendall(b"hello")  # the slot's copy of the relay's connection
        assert other.recv(5) == b"hello"
        for fd in fds[:3]:
            os.close(fd)
        pool.fill()
        assert [slot.pid for slot in pool.idle] == [1001, 1002]
    finally:
        for sock in (relay, other, *slots.ends.values()):
            sock.close()
        os.close(read)
        os.close(write)
        pool.close()


def test_a_slot_that_died_is_skipped_and_one_that_died_idle_delays_the_next_fork():
    slots = FakeSlots()
    pool = SlotPool(2, slots, log=lambda _: None)
    pool.fill()
    slots.ends[1000].close()  # the first slot is gone
    relay, other = socket.socketpair()
    try:
        assert pool.hand({"env": {}}, [relay.fileno()] * 4) == 1001
        assert pool.idle == []
        pool.fill()
        assert pool.died_idle(1002, 3) and not pool.died_idle(4242, 0)
        pool.fill()  # waits out the backoff
        assert [slot.pid for slot in pool.idle] == [1003]
        assert pool.next_fork > time.monotonic() and pool.backoff == warm_slots.BACKOFF_START
    finally:
        for sock in (relay, other, *slots.ends.values()):
            sock.close()
        pool.close()


def test_readable_path_maps_only_the_named_copies(monkeypatch):
    monkeypatch.delenv(SANDBOX_INPUTS_ENV, raising=False)
    assert readable_path("/data/a.json") == "/data/a.json"
    monkeypatch.setenv(SANDBOX_INPUTS_ENV, json.dumps({"file:///data/a.json": "/job/inputs/0-a.json"}))
    assert readable_path("file:///data/a.json") == "/job/inputs/0-a.json"
    assert readable_path("/data/b.json") == "/data/b.json"
    monkeypatch.setenv(SANDBOX_INPUTS_ENV, "not json")
    assert readable_path("file:///data/a.json") == "file:///data/a.json"


@pytest.mark.parametrize(
    ("line", "expected"),
    [(b"", None), (b'{"A": "1"}\n', {"A": "1"}), (b"[1]\n", ValueError), (b'{"A": 1}\n', ValueError)],
)
def test_the_warm_entry_reads_one_environment_line(monkeypatch, line, expected):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(line)))
    if expected is ValueError:
        with pytest.raises(ValueError):
            read_job_environment()
    else:
        assert read_job_environment() == expected


def test_a_warm_sandbox_stages_its_results_and_leaves_nothing_when_retired(tmp_path):
    assert bubblewrap_problem() is None  # `make test` installs bubblewrap
    results = tmp_path / "results"
    settings = ServiceSettings(home_dir=tmp_path / "home", sandbox_dir=tmp_path / "jobs")
    environ = {**os.environ, "PREFECT_LOCAL_STORAGE_PATH": str(results)}
    claimed = WarmSandbox(settings, environ, zygote=os.getpid())
    try:
        owners = [Owner.parse(p.name) for p in results.iterdir()]
        assert claimed.alive() and owners == [Owner.of(os.getpid())]  # staged by us, on this host
        (results / "run-2").mkdir()
        (results / "run-2" / "result").write_text("an earlier attempt's")
        assert not claimed.claim("run-2")  # a run that has results already starts cold
        assert claimed.claim("run-1") and sorted(p.name for p in results.iterdir()) == ["run-1", "run-2"]
    finally:
        claimed.retire()
    unused = WarmSandbox(settings, environ)
    engine, job_dir = unused.engine_pid, unused.directory.path
    unused.retire()
    assert procfs.process_gone(engine) and not job_dir.exists()
    assert sorted(p.name for p in results.iterdir()) == ["run-1", "run-2"]


def test_a_warm_sandbox_whose_bubblewrap_does_not_start_leaves_nothing(tmp_path, monkeypatch):
    results, jobs = tmp_path / "results", tmp_path / "jobs"
    settings = ServiceSettings(home_dir=tmp_path / "home", sandbox_dir=jobs)
    environ = {**os.environ, "PREFECT_LOCAL_STORAGE_PATH": str(results)}

    def no_bubblewrap(*_args, **_kwargs):
        raise OSError("bwrap: cannot exec")

    monkeypatch.setattr(warm_sandbox, "spawn_engine", no_bubblewrap)
    with pytest.raises(OSError, match="bwrap"):
        WarmSandbox(settings, environ)
    assert list(results.iterdir()) == [] and list(jobs.iterdir()) == []
