"""An optimizer that fails mid-search keeps its best candidate; one that fails before it has
any says which phase failed and what to change (the flow in-process, real DSPy, the local
LM over HTTP with a model of its own that errors or refuses)."""

from __future__ import annotations

import re
import uuid

import pytest

from dspy_service.testing.local_lm import start_local_lm
from tests.support.flow_runner import run_flow
from tests.support.payloads import GRADER_ERROR, job_payload, light_optimizer_payload, metric_failing_on, model_config

FAILED_BOOTSTRAP_CALLS = 10  # DSPy's max_errors: bootstrapping gives up at the 10th


@pytest.fixture
def lm():
    with start_local_lm() as server:
        yield server


def own_key(config: dict) -> dict:
    """A fresh key: a cold per-tenant LM cache, so every call of the job reaches the LM."""
    return {**config, "extra": {**config["extra"], "api_key": f"sk-{uuid.uuid4().hex}"}}


def test_random_search_failing_at_its_third_candidate_returns_its_best_so_far(lm):
    payload = light_optimizer_payload(lm.url, "bootstrap_random_search")
    payload["model_config"] = own_key(payload["model_config"])
    # Candidates 1 and 2 (zero-shot, labeled demos) are scored on the 8 validation examples;
    # then the LM answers 400 (never retried) until bootstrapping candidate 3 gives up.
    lm.set_faults(FAILED_BOOTSTRAP_CALLS, 400, after=16)
    outcome = run_flow(payload)
    assert outcome.state.is_completed(), outcome.message
    result = outcome.result
    details = result["details"]
    assert details["termination_reason"] == "optimizer_error"
    assert "Injected fault 400" in details["optimizer_error"], details["optimizer_error"]
    assert details["candidates_scored"] == 2
    assert lm.stats()["failed_calls"] == FAILED_BOOTSTRAP_CALLS
    # The kept candidate is a real program: evaluated on the test split, its state saved.
    assert result["optimized_test_metric"] is not None and result["baseline_test_metric"] is not None
    assert result["program_artifact"]["program_state"]


def test_a_successful_job_says_its_compile_completed(lm):
    payload = light_optimizer_payload(lm.url, "bootstrap_random_search")
    outcome = run_flow(payload)
    assert outcome.state.is_completed(), outcome.message
    assert outcome.result["details"]["termination_reason"] == "completed"
    assert "optimizer_error" not in outcome.result["details"]


def test_miprov2_whose_prompt_model_refuses_names_the_phase_and_the_fix(lm):
    payload = light_optimizer_payload(lm.url, "miprov2")
    payload["model_config"] = own_key(payload["model_config"])
    payload["prompt_model_config"] = own_key(model_config(lm.url, name="openai/local-prompt"))
    lm.refuse("local-prompt")
    outcome = run_flow(payload)
    assert outcome.state.is_failed()
    message = outcome.message
    assert message.startswith(
        "MIPROv2 could not propose instructions: the prompt model answered without the `proposed_instruction` field"
    ), message
    assert "I'm ready to assist" in message and "use a stronger `prompt_model_config`" in message
    # Every answer to the proposal prompt was unusable (ChatAdapter's, then JSONAdapter's retry).
    assert re.search(r"field (\d+) of \1 times", message), message


def test_a_metric_that_raises_while_the_optimizer_scores_is_named_not_the_executor_s_wrapper(lm):
    payload = light_optimizer_payload(lm.url, "bootstrap_random_search")
    rows = job_payload(lm.url, rows=60)["dataset"]  # unshuffled: 30 train, 12 validation, 18 test rows
    payload.update(dataset=rows, shuffle=False, metric_code=metric_failing_on([r["question"] for r in rows[30:42]]))
    outcome = run_flow(payload)
    assert outcome.state.is_failed()
    message = outcome.message
    # DSPy's Evaluate gives up after 10 errors with "Execution cancelled due to errors or interruption".
    assert "Execution cancelled" not in message, message
    assert message.startswith("BootstrapFewShotWithRandomSearch failed: the metric raised on "), message
    assert GRADER_ERROR in message, message
