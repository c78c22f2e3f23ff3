"""A failed job keeps what it paid for and says why, on a real stack (sandboxed job,
real DSPy, the local LM): the compiled program of a job whose evaluation failed is its
artifact; settings given in the wrong place are moved or refused before the job runs."""

from __future__ import annotations

import pytest

from tests.support.payloads import (
    GRADER_ERROR,
    TEST_ROWS,
    job_payload,
    light_optimizer_payload,
    payload_failing_on,
    tenant_model,
)

pytestmark = [pytest.mark.integration, pytest.mark.sqlite_only]


def test_a_job_whose_evaluation_failed_keeps_its_program_and_counts_the_errors(stack, local_lm):
    job_id = stack.submit(payload_failing_on(local_lm.url, failing=10))
    summary = stack.wait_terminal(job_id)
    assert summary["status"] == "failed", summary
    assert summary["message"].startswith(f"evaluation failed: 10 of {TEST_ROWS} test examples"), summary
    assert GRADER_ERROR in summary["message"] and "Execution cancelled" not in summary["message"]
    assert summary["evaluation_errors"]["optimized"]["errors"] == 10, summary["evaluation_errors"]
    assert summary["log_count"] > 0 and summary["estimated_remaining"] is None

    artifact = stack.api.get(f"/jobs/{job_id}/artifact")
    assert artifact.status_code == 200, artifact.text
    body = artifact.json()
    assert body["program_artifact"]["program_state"] and body["program_source"]["signature_code"]
    assert body["kept_after_failure"]["message"] == summary["message"]
    assert stack.api.get(f"/jobs/{job_id}").json()["result"] is None, "the contract's result stays null"


def test_settings_in_extra_move_to_their_fields_and_typos_are_listed(stack, local_lm):
    payload = job_payload(local_lm.url, rows=20, num_threads=2, num_thread=8)
    payload["model_config"]["extra"]["max_tokens"] = 256
    answer = stack.api.post("/run", json=payload)
    assert answer.status_code == 201, answer.text
    assert answer.json()["ignored_fields"] == ["num_thread"]
    summary = stack.wait_terminal(answer.json()["job_id"])
    assert summary["status"] == "success", summary

    payload["model_config"]["max_tokens"] = 128  # now both places, different values
    refused = stack.api.post("/run", json=payload)
    assert refused.status_code == 400 and refused.json()["field"] == "model_config.extra.max_tokens", refused.text


def test_an_optimizer_error_after_two_candidates_ends_with_the_best_so_far(stack, local_lm):
    payload = light_optimizer_payload(local_lm.url, "bootstrap_random_search")
    # A cold LM cache (every call reaches the LM) and a model name of its own (no other job's
    # call meets the faults).
    payload["model_config"] = {**tenant_model(local_lm.url), "name": "openai/local-arithmetic-faulty"}
    # Two candidates are scored on the 8 validation examples (16 calls); then 10 answers are
    # 400s (never retried) and bootstrapping the third candidate gives up (DSPy's max_errors).
    local_lm.set_faults(10, 400, model="local-arithmetic-faulty", after=16)
    try:
        summary = stack.wait_terminal(stack.submit(payload))
    finally:
        local_lm.set_faults(0)
    assert summary["status"] == "success", summary
    assert summary["termination_reason"] == "optimizer_error"
    details = stack.api.get(f"/jobs/{summary['job_id']}").json()["result"]["details"]
    assert details["termination_reason"] == "optimizer_error" and details["candidates_scored"] == 2
    assert "Injected fault 400" in details["optimizer_error"]
    assert details["usage"]["by_role"]["main"]["errors"] == 10
