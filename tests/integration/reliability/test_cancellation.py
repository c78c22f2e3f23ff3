"""Cancelling a running job: its whole process tree goes, and no new LM calls are made.

How fast the tree goes is measured in bench/ (bench/cancel_latency.py), not asserted here.
"""

from __future__ import annotations

import time

import pytest

from dspy_service.contract import TERMINAL_STATE_TYPES
from tests.support.payloads import job_payload, model_config
from tests.support.processes import wait_until_gone
from tests.support.reliability import SPAWNS_CHILD

pytestmark = pytest.mark.integration


def test_cancel_running_job_kills_its_tree_and_stops_lm_calls(rstack, local_lm):
    local_lm.set_delay(1500)  # one call in flight at a time (BootstrapFewShot calls the LM sequentially)
    try:
        job_id = rstack.submit(job_payload(local_lm.url, rows=60, module_name="cot", signature_code=SPAWNS_CHILD))
        procs = rstack.processes(job_id)
        rstack.wait_for_status(job_id, {"running"}, timeout=60)
        time.sleep(2)
        tree = [procs.relay, procs.supervisor, *procs.job_session()]
        assert len(tree) >= 4, f"expected relay, supervisor, engine and the user's child: {tree}"

        cancelled_at = time.time()
        response = rstack.api.post(f"/jobs/{job_id}/cancel")
        assert response.status_code == 200 and response.json()["status"] == "cancelled"
        wait_until_gone(tree, timeout=10)

        run = rstack.wait_state(job_id, {"CANCELLED"}, timeout=30)
        assert run["state"]["message"]
        time.sleep(2)  # anything still in flight would have arrived by now
        late_calls = [t for t in local_lm.stats()["call_times"] if t > cancelled_at]
        # At most the call in flight when the cancel arrived (+1 that may have started
        # while the worker was noticing the cancel); none once the job was told to stop.
        assert len(late_calls) <= 2, f"{len(late_calls)} LM calls arrived after the cancel"
    finally:
        local_lm.set_delay(0)
    job = rstack.api.get(f"/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["message"].startswith("cancelled by the user")
    assert rstack.api.post(f"/jobs/{job_id}/cancel").status_code == 409


def test_cancel_gepa_run(rstack, local_lm):
    """GEPA is told to stop through its stop callback; the run ends cancelled and quiet."""
    local_lm.set_delay(100)
    try:
        payload = job_payload(
            local_lm.url,
            rows=60,
            optimizer_name="gepa",
            optimizer_kwargs={"max_metric_calls": 2000},
            reflection_model_config=model_config(local_lm.url),
        )
        job_id = rstack.submit(payload)
        procs = rstack.processes(job_id)
        rstack.wait_for_status(job_id, {"running"}, timeout=60)
        time.sleep(3)
        tree = [procs.relay, procs.supervisor, *procs.job_session()]
        cancelled_at = time.time()
        assert rstack.api.post(f"/jobs/{job_id}/cancel").status_code == 200
        wait_until_gone(tree, timeout=10)
        rstack.wait_state(job_id, {"CANCELLED"}, timeout=30)
        time.sleep(1)
        stats = local_lm.stats()
        late = [t for t in stats["call_times"] if t > cancelled_at + 1.0]
        assert not late, f"{len(late)} LM calls more than 1 s after the cancel"
    finally:
        local_lm.set_delay(0)
    job = rstack.api.get(f"/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["result"] is None


def test_a_cancel_accepted_while_the_job_starts_is_honoured(rstack, local_lm):
    """A cancel answered 200 ends the job cancelled whenever it lands: the run still
    Scheduled, Pending without a process, Pending with one, or just Running (each path ends
    it differently: Prefect, the worker, the supervisor). One job at a time, so that none
    waits for a slot; each would take over 10 s to succeed."""
    local_lm.set_delay(300)
    ends = {}
    try:
        for offset in (0.0, 0.3, 0.6, 1.0):
            job_id = rstack.submit(job_payload(local_lm.url, rows=40))
            time.sleep(offset)
            assert rstack.api.post(f"/jobs/{job_id}/cancel").status_code == 200
            rstack.wait_state(job_id, set(TERMINAL_STATE_TYPES), timeout=60)
            job = rstack.api.get(f"/jobs/{job_id}/summary").json()
            ends[offset] = (job["status"], job["message"])
    finally:
        local_lm.set_delay(0)
    assert all(s == "cancelled" and m.startswith("cancelled by the user") for s, m in ends.values()), ends
