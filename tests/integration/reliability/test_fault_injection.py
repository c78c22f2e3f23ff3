"""Restarts and fault injection: nothing is lost, every job ends with a reason.

30 small jobs are submitted at once; while they run, the worker is SIGKILLed twice and
the Prefect server is restarted once (the API is restarted too). Afterwards every job is
listed and terminal: `success`, or `failed` saying its worker died, and those are
submitted again and succeed.
"""

from __future__ import annotations

import os
import signal
import uuid

import pytest

from tests.support.payloads import job_payload
from tests.support.polling import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOBS = 30
TERMINAL = ("success", "failed", "cancelled")
WORKER_GONE = (
    "worker running this job",
    "worker that took this job",
    "stopped sending heartbeats",
    "lost the Prefect API",
)


def statuses(rstack, user: str) -> dict[str, dict]:
    page = rstack.api.get("/jobs", params={"username": user, "limit": 500})
    assert page.status_code == 200, page.text
    return {item["job_id"]: item for item in page.json()["items"]}


def running_count(rstack, user: str) -> int:
    try:
        return sum(item["status"] in ("running", "validating") for item in statuses(rstack, user).values())
    except (AssertionError, OSError):
        return 0


def describe_open_jobs(rstack, user: str) -> None:
    """What a job that never ended went through (printed when the test fails)."""
    for job_id, job in statuses(rstack, user).items():
        if job["status"] in TERMINAL:
            continue
        history = rstack.prefect.get("/flow_run_states/", params={"flow_run_id": job_id}).json()
        print(job_id, job["status"], [(h["timestamp"], h["type"], h["name"], h["message"]) for h in history])
        for log in rstack.stack.workers[0].log_path.read_text(errors="replace").splitlines():
            if job_id in log:
                print("   worker:", log[:300])


def kill_worker(rstack) -> None:
    os.kill(rstack.worker_pid(), signal.SIGKILL)
    rstack.restart_worker()


def restart_prefect_server(rstack) -> None:
    server = rstack.stack.server
    server.stop()
    server.start(rstack.env)
    rstack.wait_healthy(timeout=180)


def restart_api(rstack) -> None:
    rstack.stack.api.stop()
    rstack.stack.api.start(rstack.env)
    rstack.wait_healthy(timeout=120)


def test_thirty_jobs_through_worker_kills_and_a_server_restart(rstack, local_lm):
    user = f"chaos-{uuid.uuid4().hex[:8]}"
    local_lm.set_delay(50)
    try:
        ids = [rstack.submit(job_payload(local_lm.url, rows=20, seed=i, username=user)) for i in range(JOBS)]

        wait_until(lambda: running_count(rstack, user) >= 2, 120, 0.5, what="jobs to run")
        kill_worker(rstack)
        wait_until(lambda: running_count(rstack, user) >= 2, 120, 0.5, what="jobs to run again")

        def finished() -> list[str]:
            return [j for j, job in statuses(rstack, user).items() if job["status"] == "success"]

        # The restart must find finished results to keep.
        wait_until(lambda: bool(finished()), 120, 0.5, what="a job to finish before the server restart")
        finished_before_restart = finished()
        restart_prefect_server(rstack)
        restart_api(rstack)
        wait_until(lambda: running_count(rstack, user) >= 2, 120, 0.5, what="jobs to run after the restarts")
        kill_worker(rstack)

        def all_terminal() -> bool:
            try:
                jobs = statuses(rstack, user)
            except (AssertionError, OSError):
                return False
            return len(jobs) == JOBS and all(job["status"] in TERMINAL for job in jobs.values())

        try:
            wait_until(all_terminal, 300, 0.5, what="all 30 jobs to end")
        except AssertionError:
            describe_open_jobs(rstack, user)
            raise
    finally:
        local_lm.set_delay(0)

    jobs = statuses(rstack, user)
    assert set(jobs) == set(ids), "a job is missing from /jobs"
    failed = {job_id: job for job_id, job in jobs.items() if job["status"] != "success"}
    for job in failed.values():
        assert job["status"] == "failed", job
        assert any(words in (job["message"] or "") for words in WORKER_GONE), job["message"]
    assert len(failed) < JOBS // 2, f"{len(failed)} of {JOBS} jobs failed"
    print(f"{len(failed)} of {JOBS} jobs failed with their worker: {[job['message'] for job in failed.values()]}")

    # Jobs finished before the restarts keep their results; failed ones succeed when resubmitted.
    assert finished_before_restart, "no job had finished before the server restart"
    for job_id in finished_before_restart:
        assert rstack.api.get(f"/jobs/{job_id}").json()["result"]["optimized_test_metric"] is not None
    again = [rstack.submit(job_payload(local_lm.url, rows=20, username=user + "-again")) for _ in failed]
    for job_id in again:
        assert rstack.wait_terminal(job_id, timeout=240)["status"] == "success"
    queue = rstack.api.get("/queue").json()
    assert queue["active_jobs"] == 0 and queue["pending_jobs"] == 0, queue
