"""Processes that die mid-job: the job ends `failed` saying what died.

The machine-loss case (worker, supervisor and engine killed together, so nobody is left
to report) relies on flow-run heartbeats and the zombie automation that the start
command registers; it takes up to DSPY_SERVICE_ZOMBIE_AFTER_SECONDS (45 s here) plus a
heartbeat interval, so it starts first and is checked last while the other cases run.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from deployments.runtime.procfs import process_gone
from tests.support.payloads import job_payload, tenant_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]


SLOW_LM_MS = 1000  # jobs must still be running when their processes are killed


def running_jobs(rstack, local_lm, count: int):
    ids = [
        rstack.submit(job_payload(local_lm.url, rows=60, module_name="cot", model_config=tenant_model(local_lm.url)))
        for _ in range(count)
    ]
    for job_id in ids:
        rstack.wait_for_status(job_id, {"running"}, timeout=90)
    procs = [rstack.processes(job_id) for job_id in ids]
    time.sleep(1)
    return list(zip(ids, procs, strict=True))


@pytest.fixture(scope="module")
def crashes(rstack, local_lm):
    """Three jobs run side by side on one worker; then, in turn: job A's engine is
    SIGKILLed; the worker is SIGKILLed together with job D's supervisor and engine (a lost
    machine, for D; a lost worker, for B); the worker is restarted."""
    local_lm.set_delay(SLOW_LM_MS)
    try:
        (a, a_procs), (b, b_procs), (d, d_procs) = running_jobs(rstack, local_lm, 3)
        os.kill(a_procs.engine, signal.SIGKILL)
        outcome = {"engine_kill": rstack.wait_terminal(a, timeout=30)}

        killed_at = time.monotonic()
        for pid in (rstack.worker_pid(), d_procs.relay, d_procs.supervisor, d_procs.engine):
            os.kill(pid, signal.SIGKILL)
        outcome["worker_kill"] = rstack.wait_terminal(b, timeout=30)
        outcome["worker_kill_processes"] = [b_procs.engine, b_procs.supervisor, b_procs.relay]
        outcome["machine_loss"] = (d, killed_at)
        rstack.restart_worker()
    finally:
        local_lm.set_delay(0)
    return outcome


def test_engine_sigkill_fails_the_job_at_once(crashes):
    job = crashes["engine_kill"]
    assert job["status"] == "failed"
    assert "job process was killed (SIGKILL)" in job["message"]


def test_worker_sigkill_fails_its_job_at_once(crashes):
    job = crashes["worker_kill"]
    assert job["status"] == "failed"
    assert "worker running this job" in job["message"] and "submit it again" in job["message"]
    for pid in crashes["worker_kill_processes"]:
        assert process_gone(pid)


def test_worker_shutdown_finishes_or_fails_its_running_job_with_a_reason(rstack, local_lm, crashes):
    """SIGTERM (a graceful restart): Prefect's worker stops taking runs and usually drains
    the running one; when the signal lands so that it exits at once, the supervisor sees
    its parent go and fails the job. Either way the job ends, with a reason."""
    local_lm.set_delay(SLOW_LM_MS)
    try:
        ((job_id, _),) = running_jobs(rstack, local_lm, 1)
        os.kill(rstack.worker_pid(), signal.SIGTERM)
        time.sleep(1)
    finally:
        local_lm.set_delay(0)  # a draining worker finishes the job quickly now
    try:
        job = rstack.wait_terminal(job_id, timeout=30)
    finally:
        rstack.restart_worker()  # a drained worker may still be winding down
    assert job["status"] == "success" or (
        job["status"] == "failed" and "worker running this job" in job["message"]
    ), job


def test_slots_are_released_after_crashes(rstack, local_lm, crashes):
    queue = rstack.api.get("/queue").json()
    assert queue["active_jobs"] <= 1, queue  # only the lost machine's job may still be open
    job_id = rstack.submit(job_payload(local_lm.url, rows=20))
    assert rstack.wait_terminal(job_id, timeout=120)["status"] == "success"


def test_machine_loss_is_detected_by_heartbeats(rstack, crashes):
    job_id, killed_at = crashes["machine_loss"]
    remaining = 45 + 30 + 40 - (time.monotonic() - killed_at)
    job = rstack.wait_terminal(job_id, timeout=max(remaining, 5))
    assert job["status"] == "failed"
    assert "stopped sending heartbeats" in job["message"]
    assert rstack.flow_run(job_id)["state_type"] == "CRASHED"
    assert rstack.api.get("/queue").json()["active_jobs"] == 0
