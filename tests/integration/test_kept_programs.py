"""A job that ends during evaluation without a result of its own, cancelled or killed, keeps
the program it compiled, on a real stack (sandboxed job, real DSPy, the local LM slowed down
so that evaluation takes seconds): GET /jobs/{id}/artifact returns it to its owner only,
and deleting the job deletes it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from dspy_service.client import build_program
from dspy_service.contract import kept_program_key
from tests.support.payloads import job_payload, tenant_model
from tests.support.polling import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.sqlite_only]

LM_DELAY_MS = 300  # per call; one thread: evaluating 2 programs x 12 test examples takes ~7 s


def task_state(stack, job_id: str, name: str) -> str | None:
    body = {"flow_runs": {"id": {"any_": [job_id]}}, "task_runs": {"name": {"any_": [name]}}, "limit": 5}
    runs = stack.prefect.post("/task_runs/filter", json=body).json()
    return runs[0]["state_type"] if runs else None


def kept_log_line(stack, job_id: str) -> str | None:
    for entry in stack.api.get(f"/jobs/{job_id}/logs").json():
        if entry["message"].startswith("compiled program kept in the job's result storage"):
            return entry["message"]
    return None


def start_and_reach_evaluation(stack, local_lm) -> str:
    """A job (its own LM key: a cold cache, so every call waits) that is now evaluating, and
    whose log said that it kept its compiled program (the size and cost are printed)."""
    payload = job_payload(local_lm.url, rows=40, num_threads=1, model_config=tenant_model(local_lm.url))
    job_id = stack.submit(payload)
    wait_until(
        lambda: task_state(stack, job_id, "evaluate-programs") == "RUNNING",
        120,
        0.2,
        what=lambda: f"job {job_id} to evaluate: {stack.api.get(f'/jobs/{job_id}/summary').json()}",
    )
    print(wait_until(lambda: kept_log_line(stack, job_id), 20, 0.2, what="the job's log to say it kept its program"))
    assert task_state(stack, job_id, "evaluate-programs") == "RUNNING", "evaluation ended before the test stopped it"
    return job_id


def kept_file(stack, job_id: str) -> Path:
    """Where a sandboxed job keeps its compiled program: its own result directory."""
    return Path(stack.env["PREFECT_LOCAL_STORAGE_PATH"]) / job_id / kept_program_key(job_id)


def assert_compiled_program(body: dict) -> None:
    """The artifact is the compiled program: a pickle-free state that loads, with its demos."""
    program = build_program(body["program_source"], body["program_artifact"]["program_state"])
    assert program.predictors()[0].demos, "the compiled program's demos are kept"
    assert body["program_artifact"]["optimized_prompt"]["demos"]


def test_a_job_cancelled_during_evaluation_keeps_its_compiled_program(stack, local_lm):
    local_lm.set_delay(LM_DELAY_MS)
    try:
        job_id = start_and_reach_evaluation(stack, local_lm)
        assert stack.api.post(f"/jobs/{job_id}/cancel").status_code == 200
        stack.wait_state(job_id, {"CANCELLED"}, timeout=60)
    finally:
        local_lm.set_delay(0)
    summary = stack.api.get(f"/jobs/{job_id}/summary").json()
    assert summary["status"] == "cancelled" and summary["optimized_test_metric"] is None, summary

    answer = stack.api.get(f"/jobs/{job_id}/artifact")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert_compiled_program(body)
    assert body["kept_after_cancel"]["message"].startswith("cancelled by the user"), body["kept_after_cancel"]
    assert body["kept_after_cancel"]["details"]["usage"]["total"]["calls"] > 0
    assert "kept_after_failure" not in body
    assert stack.api.get(f"/jobs/{job_id}").json()["result"] is None, "the contract's result stays null"

    stranger = stack.add_user("kept-stranger")
    assert stranger.get(f"/jobs/{job_id}/artifact").status_code == 404

    assert kept_file(stack, job_id).is_file()
    assert stack.api.delete(f"/jobs/{job_id}").status_code == 200
    assert not kept_file(stack, job_id).exists() and not kept_file(stack, job_id).parent.exists()


def test_a_job_whose_engine_is_killed_during_evaluation_keeps_its_compiled_program(stack, local_lm):
    local_lm.set_delay(LM_DELAY_MS)
    try:
        job_id = start_and_reach_evaluation(stack, local_lm)
        os.kill(stack.processes(job_id).engine, signal.SIGKILL)
        summary = stack.wait_terminal(job_id, timeout=60)
    finally:
        local_lm.set_delay(0)
    assert summary["status"] == "failed" and "SIGKILL" in summary["message"], summary

    answer = stack.api.get(f"/jobs/{job_id}/artifact")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert_compiled_program(body)
    assert body["kept_after_failure"]["message"] == summary["message"]
    assert stack.api.delete(f"/jobs/{job_id}").status_code == 200
    assert not kept_file(stack, job_id).exists()
