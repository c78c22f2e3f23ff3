"""A job's hard budget stops each optimizer within it and keeps the best program so far
(the flow in-process, real DSPy, the local LM over HTTP whose own counts are the check).

Each job has a key of its own (a cold per-tenant cache), so every counted call reaches the
LM server: its count is what the job paid for."""

from __future__ import annotations

import uuid

import dspy
import pytest

from dspy_service.testing.local_lm import start_local_lm
from tests.support.flow_runner import run_flow
from tests.support.payloads import job_payload, light_optimizer_payload, payload_led_by


@pytest.fixture
def lm():
    with start_local_lm() as server:
        yield server


def budgeted(payload: dict, **budget) -> dict:
    for key in ("model_config", "reflection_model_config"):
        if key in payload:
            payload[key] = {**payload[key], "extra": {**payload[key]["extra"], "api_key": f"sk-{uuid.uuid4().hex}"}}
    payload["budget"] = budget
    return payload


def server_tokens(lm) -> int:
    stats = lm.stats()
    return stats["prompt_tokens"] + stats["completion_tokens"]


def assert_stopped_by_budget(outcome, lm) -> dict:
    """Success with budget_exhausted, and the job's own count is the LM server's."""
    assert outcome.state.is_completed(), outcome.message
    details = outcome.result["details"]
    assert details["termination_reason"] == "budget_exhausted", details
    budget = details["budget"]
    assert budget["exhausted"] and budget["exhausted_in"] == "compile-program"
    assert budget["used"]["lm_calls"] == lm.stats()["calls"]
    assert budget["used"]["tokens"] == server_tokens(lm)
    return budget


def test_bootstrap_stops_between_examples_and_keeps_the_demos_it_paid_for(lm):
    # The train split is led by 3 questions the zero-shot model answers right: each costs one
    # call and becomes a demo. 24 calls are the evaluation's (2 programs × 12 test rows).
    payload = budgeted(payload_led_by(lm.url, easy=True, count=3), max_lm_calls=27)
    outcome = run_flow(payload)
    budget = assert_stopped_by_budget(outcome, lm)
    assert lm.stats()["calls"] == 27 and budget["overshoot"] == {"max_lm_calls": 0}
    result = outcome.result
    # Without the budget BootstrapFewShot would go on to its 4th demo (max_bootstrapped_demos).
    program = dspy.Predict("question -> answer")
    program.load_state(result["program_artifact"]["program_state"])  # the saved program loads
    assert len(program.demos) == 3
    assert result["optimized_test_metric"] > result["baseline_test_metric"]


def test_gepa_stops_at_an_iteration_boundary_with_its_best_candidate(lm):
    payload = budgeted(light_optimizer_payload(lm.url, "gepa"), max_lm_calls=60)
    outcome = run_flow(payload)
    budget = assert_stopped_by_budget(outcome, lm)
    assert lm.stats()["calls"] <= 60 and budget["overshoot"] == {"max_lm_calls": 0}
    result = outcome.result
    assert result["details"]["candidates_scored"] >= 2  # the seed and at least one proposal
    assert result["optimized_test_metric"] > result["baseline_test_metric"]


def test_a_token_budget_is_exceeded_by_at_most_the_calls_in_flight(lm):
    limit = 20_000
    payload = budgeted(light_optimizer_payload(lm.url, "gepa"), max_tokens=limit)
    outcome = run_flow(payload)
    budget = assert_stopped_by_budget(outcome, lm)
    used = server_tokens(lm)
    assert budget["overshoot"] == {"max_tokens": max(0, used - limit)}
    # The largest average call of any model bounds what each call in flight added.
    largest = max(
        (m["prompt_tokens"] + m["completion_tokens"]) / m["calls"] for m in lm.stats()["by_model"].values()
    )
    assert used <= limit + budget["max_calls_in_flight"] * largest
    assert budget["max_calls_in_flight"] <= 4  # the job's num_threads (the service default)


def test_miprov2_ends_its_trials_and_keeps_its_best_evaluated_program(lm):
    payload = budgeted(light_optimizer_payload(lm.url, "miprov2"), max_lm_calls=100)
    outcome = run_flow(payload)
    budget = assert_stopped_by_budget(outcome, lm)
    assert lm.stats()["calls"] <= 100 and budget["overshoot"] == {"max_lm_calls": 0}
    result = outcome.result
    assert result["details"]["candidates_scored"] >= 1
    assert result["optimized_test_metric"] > result["baseline_test_metric"]


def test_a_budget_spent_before_any_candidate_fails_saying_how_far_it_got(lm):
    # 24 of 26 calls are the test evaluation's: MIPROv2 gets 2, and proposes nothing.
    payload = budgeted(light_optimizer_payload(lm.url, "miprov2"), max_lm_calls=26)
    outcome = run_flow(payload)
    assert outcome.state.is_failed()
    message = outcome.message
    assert message.startswith("the budget ran out during compile-program before MIPROv2 had a candidate: "), message
    assert "used 2 of 26 LM calls" in message and "24 LM calls kept for the test evaluation" in message, message
    assert "candidates scored: 0" in message, message
    assert lm.stats()["calls"] == 2


# A metric that asks the LM once per scored example (a judge; not while bootstrapping): the
# evaluation needs more calls than the one per predictor and example reserved for it.
JUDGING_METRIC = (
    "import dspy\n"
    "def metric(example, pred, trace=None):\n"
    "    if trace is None and dspy.settings.lm is not None:\n"
    "        dspy.settings.lm(messages=[{'role': 'user', 'content': 'Judge: ' + example.question}])\n"
    "    return str(pred.answer).strip() == str(example.answer).strip()\n"
)


def test_an_evaluation_beyond_its_reserve_fails_naming_the_budget_and_keeps_the_program(lm):
    # Compile gets 4 calls (4 examples bootstrapped); the evaluation is given 24 and needs 36:
    # 12 test rows for the baseline and 12 verdicts, then 12 for the optimized program (its
    # verdicts come from the cache).
    payload = budgeted(payload_led_by(lm.url, easy=True, count=3, metric_code=JUDGING_METRIC), max_lm_calls=28)
    outcome = run_flow(payload)
    assert outcome.state.is_failed()
    message = outcome.message
    assert message.startswith("the budget ran out during the test evaluation: "), message
    assert "used 28 of 28 LM calls" in message and "The compiled program is kept" in message, message
    assert lm.stats()["calls"] == 28
    kept = outcome.state.result(raise_on_failure=False)  # what GET /jobs/{id}/artifact returns
    assert kept["details"]["budget"]["refused_calls"] > 0 and kept["program_artifact"]["program_state"]


def test_copro_s_calls_for_several_completions_count_every_request_the_lm_server_gets(lm):
    # COPRO asks its prompt model for breadth - 1 = 2 instructions at once, then breadth = 3:
    # DSPy's native engine sends one request per completion. The budget counts them all.
    payload = budgeted(
        job_payload(
            lm.url, rows=20, module_name="cot", optimizer_name="copro", optimizer_kwargs={"breadth": 3, "depth": 2}
        ),
        max_lm_calls=10_000,
    )
    outcome = run_flow(payload)
    assert outcome.state.is_completed(), outcome.message
    details = outcome.result["details"]
    served = lm.stats()
    assert details["budget"]["used"]["lm_calls"] == served["calls"]
    assert details["budget"]["used"]["tokens"] == server_tokens(lm)
    assert details["usage"]["total"]["calls"] == served["calls"]
