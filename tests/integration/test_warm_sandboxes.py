"""Warm sandboxes (deployments/runtime/warm_slots.py): with warm start and the sandbox on,
each worker keeps one sandbox per job slot started before its job, imports done, and a
job runs in one of those; no sandbox ever runs a second job.

A stack of its own (SQLite, one worker with its zygote, 2 job slots, the reliability
suite's hostile settings: a canary provider key in the worker's environment, lowered
limits).
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from deployments.runtime import procfs
from dspy_service.testing.local_lm import make_arithmetic_dataset
from tests.integration.test_warm_start import FIND_SECRETS, WarmStack
from tests.support.checks import assert_a_job_succeeds_with_its_result
from tests.support.payloads import job_payload
from tests.support.polling import wait_until
from tests.support.processes import wait_until_gone
from tests.support.reliability import SIG, SPAWNS_CHILD, STACK_ENV

pytestmark = pytest.mark.integration

WARM_ENTRY = "deployments.runtime.warm_entry"
SLOTS = 2


@pytest.fixture(scope="module")
def sstack(tmp_path_factory, local_lm):
    home = tmp_path_factory.mktemp("stack-warm-sandboxes")
    running = WarmStack.start(home, job_slots=SLOTS, env=STACK_ENV, warm_start=True)
    yield running
    local_lm.set_delay(0)
    running.stop()


def descends_from(pid: int, ancestor: int) -> bool:
    parent = procfs.parent_of(pid)
    while parent not in (None, 0, 1):
        if parent == ancestor:
            return True
        parent = procfs.parent_of(parent)
    return False


def warm_engines(stack: WarmStack) -> set[int]:
    """The zygote's waiting (or running) warm engines: `python -m ...warm_entry` in bubblewrap."""
    zygote = stack.zygote_pid
    return {
        stat.pid
        for stat in procfs.live_processes()
        if WARM_ENTRY in (procfs.cmdline_of(stat.pid) or "")
        and procfs.read_comm(stat.pid) != "bwrap"
        and descends_from(stat.pid, zygote)
    }


def idle_engines(stack: WarmStack, count: int = SLOTS) -> set[int]:
    def enough() -> set[int] | None:
        found = warm_engines(stack)
        return found if len(found) >= count else None

    return wait_until(enough, 60, 0.1, what=f"{count} warm sandboxes to wait for jobs")


def test_a_job_runs_in_a_sandbox_started_before_it(sstack, local_lm):
    waiting = idle_engines(sstack)
    local_lm.set_delay(300)
    try:
        job_id = sstack.submit(job_payload(local_lm.url, rows=20))
        procs = sstack.processes(job_id)
        assert procs.engine in waiting, (procs.engine, waiting)
        assert procfs.parent_of(procs.supervisor) == sstack.zygote_pid
        assert procs.supervisor != procs.relay  # the worker's child is still the relay
    finally:
        local_lm.set_delay(0)
    assert sstack.wait_terminal(job_id)["status"] == "success"
    worker_log = sstack.stack.workers[0].log_path.read_text(errors="replace")
    assert f"started warm sandboxed engine {procs.engine}" in worker_log


def test_the_contract_result_in_a_warm_sandbox(sstack, local_lm):
    idle_engines(sstack)
    assert_a_job_succeeds_with_its_result(sstack, local_lm)


def test_every_job_gets_a_fresh_sandbox(sstack, local_lm):
    first = sstack.submit(job_payload(local_lm.url, rows=20))
    used = sstack.processes(first).engine
    assert sstack.wait_terminal(first)["status"] == "success"
    wait_until_gone([used], timeout=30)
    refilled = idle_engines(sstack)
    assert used not in refilled
    second = sstack.submit(job_payload(local_lm.url, rows=20))
    assert sstack.processes(second).engine in refilled
    assert sstack.wait_terminal(second)["status"] == "success"


def test_no_worker_secret_reaches_a_warm_engine(sstack, local_lm):
    idle_engines(sstack)
    job = sstack.wait_terminal(sstack.submit(job_payload(local_lm.url, rows=20, signature_code=FIND_SECRETS + SIG)))
    assert "RuntimeError: SECRETS none" in (job["message"] or ""), job


def test_a_dataset_source_file_is_handed_to_a_warm_sandbox(sstack, local_lm, tmp_path):
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in make_arithmetic_dataset(20, seed=3)))
    idle_engines(sstack)
    payload = job_payload(local_lm.url, dataset=None, dataset_source=str(source), dataset_format="jsonl")
    job = sstack.wait_terminal(sstack.submit(payload))
    assert job["status"] == "success", job


def test_cancel_kills_the_warm_sandboxed_job_tree(sstack, local_lm):
    idle_engines(sstack)
    local_lm.set_delay(1500)
    try:
        job_id = sstack.submit(job_payload(local_lm.url, rows=60, module_name="cot", signature_code=SPAWNS_CHILD))
        procs = sstack.processes(job_id)
        sstack.wait_for_status(job_id, {"running"}, timeout=60)
        time.sleep(1)
        tree = [procs.relay, procs.supervisor, *procs.job_session()]
        assert len(tree) >= 5, f"expected relay, supervisor, bubblewrap, engine and the user's child: {tree}"
        assert sstack.api.post(f"/jobs/{job_id}/cancel").status_code == 200
        wait_until_gone(tree, timeout=10)
        sstack.wait_state(job_id, {"CANCELLED"}, timeout=30)
    finally:
        local_lm.set_delay(0)
    assert sstack.api.get(f"/jobs/{job_id}").json()["status"] == "cancelled"


def test_engine_sigkill_fails_the_job_and_a_fresh_sandbox_takes_the_next(sstack, local_lm):
    idle_engines(sstack)
    local_lm.set_delay(1000)
    try:
        job_id = sstack.submit(job_payload(local_lm.url, rows=60, module_name="cot"))
        engine = sstack.processes(job_id).engine
        sstack.wait_for_status(job_id, {"running"}, timeout=60)
        os.kill(engine, signal.SIGKILL)
        job = sstack.wait_terminal(job_id, timeout=30)
    finally:
        local_lm.set_delay(0)
    assert job["status"] == "failed" and "job process was killed (SIGKILL)" in job["message"], job
    refilled = idle_engines(sstack)
    after = sstack.submit(job_payload(local_lm.url, rows=20))
    assert sstack.processes(after).engine in refilled
    assert sstack.wait_terminal(after)["status"] == "success"


def test_a_zygote_crash_ends_its_idle_sandboxes_but_not_its_running_job(sstack, local_lm):
    """Last in the module: it leaves the stack without a zygote. The running job (its slot
    is its supervisor already) finishes; the idle sandboxes go with their zygote and leave
    no staged result directory; the next job starts cold."""
    idle_engines(sstack)
    home = sstack.stack.config.settings.home_dir
    local_lm.set_delay(300)
    try:
        running = sstack.submit(job_payload(local_lm.url, rows=20))
        engine = sstack.processes(running).engine
        idle = idle_engines(sstack, count=SLOTS + 1) - {engine}  # the job's slot was replaced
        os.kill(sstack.zygote_pid, signal.SIGKILL)
        sstack.stack.zygotes[0].process.wait(10)
        wait_until_gone(idle, timeout=15)
        assert sstack.wait_terminal(running, timeout=90)["status"] == "success"
    finally:
        local_lm.set_delay(0)
    wait_until(lambda: not list(home.rglob(".warm-*")), 15, 0.1, what="the staged result directories to go")
    cold = sstack.submit(job_payload(local_lm.url, rows=20))
    assert sstack.wait_terminal(cold, timeout=90)["status"] == "success"
    assert "warm start unavailable" in sstack.stack.workers[0].log_path.read_text(errors="replace")
