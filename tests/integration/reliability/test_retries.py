"""Transient provider errors are retried per LM call; user-code errors never are; a
re-run of a killed job replays its paid calls from the tenant cache."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import pytest

from dspy_service.testing.local_lm import start_local_lm
from tests.support.payloads import job_payload, tenant_model

pytestmark = pytest.mark.integration


FAULTS = [
    {"status": 429, "retry_after": 1},
    {"status": 503},
    {"status": 500},
    {"status": 503, "delay_ms": 2500},  # the client's 1 s timeout fires first: a timeout error
]


def inject_in_turn(local_lm, faults: list[dict], count: int, stop: threading.Event) -> None:
    """`count` failures of each kind, the next kind once the previous ones were consumed."""
    consumed = local_lm.stats()["failed_calls"]
    for fault in faults:
        local_lm.set_faults(count, **fault)
        consumed += count
        while local_lm.stats()["failed_calls"] < consumed and not stop.is_set():
            time.sleep(0.05)


def test_transient_lm_errors_are_retried(rstack, local_lm):
    """429 (with Retry-After), 503, 500 and timeouts, each on 2 calls of one job."""
    payload = job_payload(local_lm.url, rows=20, model_config=tenant_model(local_lm.url, timeout=1))
    local_lm.reset()
    stop = threading.Event()
    injector = threading.Thread(target=inject_in_turn, args=(local_lm, FAULTS, 2, stop), daemon=True)
    injector.start()
    try:
        job_id = rstack.submit(payload)
        job = rstack.wait_terminal(job_id)
    finally:
        stop.set()
        injector.join(5)
        local_lm.set_faults(0)
    assert job["status"] == "success", job["message"]
    assert local_lm.stats()["failed_calls"] == 2 * len(FAULTS), "every injected failure was met and retried"
    detail = rstack.api.get(f"/jobs/{job_id}").json()
    usage = detail["result"]["details"]["usage"]["total"]
    assert usage["calls"] == local_lm.stats()["calls"], "each retried call was paid once"
    # Every request the LM server failed was made again (a retry) or ended its call (an
    # error: one call may meet more injected failures in a row than it has retries).
    assert usage["retries"] + usage["errors"] == local_lm.stats()["failed_calls"], usage
    # Each retry was shown as a progress event while it waited.
    retries = [event["metrics"] for event in detail["progress_events"] if event["event"] == "retry"]
    assert len(retries) == usage["retries"], retries
    assert {m["role"] for m in retries} == {"main"} and all(m["wait_seconds"] >= 0 for m in retries), retries
    assert sum("Injected fault 429" in m["error"] for m in retries) == 2, retries


def test_a_job_waiting_to_retry_says_so_in_its_summary(rstack, local_lm):
    """A call that keeps failing stalls the job: its summary shows the wait, not the last
    healthy bar, and stops showing it once the calls go through again."""
    local_lm.reset()
    local_lm.set_faults(3, status=503, retry_after=4)  # the job's first call waits 3 x 4 s
    try:
        job_id = rstack.submit(job_payload(local_lm.url, rows=20, model_config=tenant_model(local_lm.url)))
        retrying, deadline = None, time.monotonic() + 60
        while retrying is None and time.monotonic() < deadline:
            summary = rstack.api.get(f"/jobs/{job_id}/summary").json()
            retrying = (summary.get("latest_metrics") or {}).get("retrying")
            time.sleep(0.25)
        job = rstack.wait_terminal(job_id)
    finally:
        local_lm.set_faults(0)
    assert retrying is not None, "the summary never showed the retry wait"
    assert retrying["role"] == "main" and retrying["wait_seconds"] == 4 and 1 <= retrying["attempt"] <= 3, retrying
    assert "Injected fault 503" in retrying["error"], retrying
    assert job["status"] == "success", job["message"]
    assert "retrying" not in (job.get("latest_metrics") or {}), "the calls went through: the job moved on"
    assert job["usage"]["retries"] == 3 and job["usage"]["errors"] == 0, job["usage"]


def wait_for_calls(lm, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while lm.stats()["calls"] < count:
        assert time.monotonic() < deadline, f"the job made {lm.stats()['calls']} LM calls, not {count}"
        time.sleep(0.02)


def test_an_lm_missing_at_start_fails_the_job_at_once(rstack, late_lm_port):
    url = f"http://127.0.0.1:{late_lm_port}/v1"
    job_id = rstack.submit(job_payload(url, rows=20, model_config=tenant_model(url)))
    job = rstack.wait_terminal(job_id, timeout=120)
    assert job["status"] == "failed", job
    assert job["message"] == (
        f"LM endpoint {url} unreachable: connection refused (checked at job start; model_config.base_url)"
    ), job["message"]


def test_a_brief_lm_outage_mid_job_is_retried(rstack, late_lm_port):
    url = f"http://127.0.0.1:{late_lm_port}/v1"
    lm = start_local_lm(port=late_lm_port, delay_ms=20)
    try:
        job_id = rstack.submit(job_payload(url, rows=20, model_config=tenant_model(url)))
        wait_for_calls(lm, 5)
        lm.close()
        time.sleep(1.5)  # calls in flight fail to connect and are retried with backoff
        lm = start_local_lm(port=late_lm_port)
        job = rstack.wait_terminal(job_id)
    finally:
        lm.close()
    assert job["status"] == "success", job["message"]
    assert lm.stats()["calls"] > 0, "the job went on with the LM that came back"


def test_an_lm_gone_for_good_mid_job_fails_it_fast_naming_the_endpoint(rstack, late_lm_port):
    url = f"http://127.0.0.1:{late_lm_port}/v1"
    lm = start_local_lm(port=late_lm_port, delay_ms=20)
    model = tenant_model(url, num_retries=2)  # the first failed call waits 1 s + 2 s, not 31 s
    try:
        job_id = rstack.submit(job_payload(url, rows=40, model_config=model))
        wait_for_calls(lm, 10)
    finally:
        lm.close()
    gone = time.monotonic()
    job = rstack.wait_terminal(job_id)
    assert job["status"] == "failed", job
    assert f"LM endpoint {url} unreachable: connection refused (8 calls)" in job["message"], job["message"]
    assert time.monotonic() - gone < 60, "the job did not wait out every call's retries"
    assert job["usage"]["errors"] >= 8, job["usage"]


def test_user_code_errors_are_not_retried(rstack, local_lm):
    metric = "def metric(gold, pred, trace=None):\n    raise ValueError('broken metric')\n"
    local_lm.reset()
    job_id = rstack.submit(job_payload(local_lm.url, rows=20, metric_code=metric))
    job = rstack.wait_terminal(job_id)
    assert job["status"] == "failed" and "broken metric" in job["message"]
    assert local_lm.stats()["failed_calls"] == 0
    run = rstack.flow_run(job_id)
    assert run["run_count"] == 1
    with rstack.prefect_client() as client:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(job_id)])))
    assert task_runs and all(t.run_count == 1 for t in task_runs), [(t.name, t.run_count) for t in task_runs]


def test_rerunning_a_killed_job_does_not_pay_twice(rstack, local_lm):
    """Job A is killed mid-compile; the same job submitted again (B) replays A's calls from
    the tenant's LM cache, so A + B pay about what one clean run (C, cold cache) pays."""
    shared_model = tenant_model(local_lm.url)
    payload = job_payload(local_lm.url, rows=60, module_name="cot", model_config=shared_model)
    local_lm.set_delay(150)
    try:
        before = local_lm.stats()["calls"]
        job_a = rstack.submit(payload)
        engine = rstack.processes(job_a).engine
        rstack.wait_for_status(job_a, {"running"}, timeout=90)
        time.sleep(3)
        os.kill(engine, signal.SIGKILL)
        assert rstack.wait_terminal(job_a)["status"] == "failed"
        time.sleep(1)
        paid_a = local_lm.stats()["calls"] - before
    finally:
        local_lm.set_delay(0)
    assert paid_a > 0

    before = local_lm.stats()["calls"]
    job_b = rstack.submit(payload)
    assert rstack.wait_terminal(job_b)["status"] == "success"
    paid_b = local_lm.stats()["calls"] - before

    before = local_lm.stats()["calls"]
    cold = job_payload(local_lm.url, rows=60, module_name="cot", model_config=tenant_model(local_lm.url))
    job_c = rstack.submit(cold)
    assert rstack.wait_terminal(job_c)["status"] == "success"
    paid_c = local_lm.stats()["calls"] - before

    assert paid_b < paid_c, "the re-run paid for calls the killed run had already made"
    # The calls in flight at the kill were paid but never answered, so never cached: at most
    # one per DSPy thread (the kill may land in the threaded evaluation).
    in_flight = 4  # DSPY_SERVICE_NUM_THREADS default
    assert paid_a + paid_b <= paid_c + in_flight, (paid_a, paid_b, paid_c)
    cache_hits = rstack.api.get(f"/jobs/{job_b}").json()["result"]["details"]["usage"]["total"]["cache_hits"]
    assert cache_hits >= paid_a - in_flight
