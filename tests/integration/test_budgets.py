"""A job's hard budget on a real stack (sandboxed job, real DSPy, the local LM, whose own
per-model count is the check): a budgeted job stops optimizing, ends `success` with
`termination_reason: "budget_exhausted"` and a program that loads and beats the baseline;
one whose budget runs out before any candidate fails saying how far it got; a limit that is
zero or negative is a 422, one the test evaluation alone would use up a 400.

Each job has a model name of its own (the LM server counts per model) and a key of its own
(a cold per-tenant cache, so every counted call reaches the LM)."""

from __future__ import annotations

import uuid

import dspy
import pytest

from tests.support.payloads import job_payload, light_optimizer_payload, payload_led_by, tenant_model

pytestmark = [pytest.mark.integration, pytest.mark.sqlite_only]


def own_model(payload: dict, lm_url: str) -> str:
    name = f"local-arithmetic-{uuid.uuid4().hex[:8]}"
    payload["model_config"] = {**tenant_model(lm_url), "name": f"openai/{name}"}
    return name


def calls_of(local_lm, name: str) -> int:
    return local_lm.stats()["by_model"].get(name, {}).get("calls", 0)


def test_a_budgeted_job_ends_with_its_best_program_and_says_what_it_used(stack, local_lm):
    # 3 easy train questions lead: 3 compile calls become 3 demos; 24 calls are the test
    # evaluation's (2 programs × 12 test rows). BootstrapFewShot would go on to a 4th demo.
    payload = payload_led_by(local_lm.url, easy=True, count=3, budget={"max_lm_calls": 27})
    model = own_model(payload, local_lm.url)
    job_id = stack.submit(payload)
    summary = stack.wait_terminal(job_id)
    assert summary["status"] == "success", summary
    assert summary["termination_reason"] == "budget_exhausted", summary
    budget = summary["budget"]
    assert budget["limits"] == {"max_lm_calls": 27} and budget["overshoot"] == {"max_lm_calls": 0}, budget
    assert budget["used"]["lm_calls"] == calls_of(local_lm, model) == 27, (budget, local_lm.stats()["by_model"])
    assert summary["optimized_test_metric"] > summary["baseline_test_metric"], summary

    result = stack.api.get(f"/jobs/{job_id}").json()["result"]
    assert result["details"]["budget"] == budget and result["details"]["termination_reason"] == "budget_exhausted"
    artifact = stack.api.get(f"/jobs/{job_id}/artifact")
    assert artifact.status_code == 200, artifact.text
    program = dspy.Predict("question -> answer")
    program.load_state(artifact.json()["program_artifact"]["program_state"])
    assert len(program.demos) == 3


@pytest.mark.parametrize("optimizer, limit", [("gepa", 60), ("miprov2", 100)])
def test_gepa_and_miprov2_stop_within_their_budget_with_their_best_program(stack, local_lm, optimizer, limit):
    # The optimizers' light settings would go on past `limit` calls (tests/engine/test_budgets.py
    # runs the same jobs in-process); every role's model has a name of its own, so the LM
    # server's count for those names is what the job paid.
    payload = light_optimizer_payload(local_lm.url, optimizer)
    payload["budget"] = {"max_lm_calls": limit}
    models = [own_model(payload, local_lm.url)]
    if "reflection_model_config" in payload:
        models.append(f"local-reflection-{uuid.uuid4().hex[:8]}")
        payload["reflection_model_config"] = {**tenant_model(local_lm.url), "name": f"openai/{models[-1]}"}
    summary = stack.wait_terminal(stack.submit(payload), timeout=240)
    assert summary["status"] == "success" and summary["termination_reason"] == "budget_exhausted", summary
    budget = summary["budget"]
    paid = sum(calls_of(local_lm, model) for model in models)
    assert budget["used"]["lm_calls"] == paid <= limit, (budget, local_lm.stats()["by_model"])
    assert budget["overshoot"] == {"max_lm_calls": 0} and budget["exhausted_in"] == "compile-program", budget
    assert summary["optimized_test_metric"] > summary["baseline_test_metric"], summary


def test_a_budget_spent_before_any_candidate_fails_saying_how_far_it_got(stack, local_lm):
    # 2 compile calls, both on questions the zero-shot model gets wrong: no demo, no candidate.
    payload = payload_led_by(local_lm.url, easy=False, count=2, budget={"max_lm_calls": 26})
    model = own_model(payload, local_lm.url)
    summary = stack.wait_terminal(stack.submit(payload))
    assert summary["status"] == "failed", summary
    message = summary["message"]
    assert message.startswith("the budget ran out during compile-program before BootstrapFewShot had a candidate")
    assert "used 2 of 26 LM calls" in message and "candidates scored: 0" in message, message
    assert calls_of(local_lm, model) == 2 == summary["budget"]["used"]["lm_calls"], summary["budget"]


def test_bad_budgets_are_refused_before_a_job_exists(stack, local_lm):
    zero = stack.api.post("/run", json=job_payload(local_lm.url, budget={"max_cost_usd": 0}))
    assert zero.status_code == 422 and zero.json()["detail"][0]["field"] == "budget.max_cost_usd", zero.text
    negative = stack.api.post("/run", json=job_payload(local_lm.url, budget={"max_tokens": -5}))
    assert negative.status_code == 422 and negative.json()["detail"][0]["field"] == "budget.max_tokens", negative.text
    tiny = stack.api.post("/run", json=job_payload(local_lm.url, rows=40, budget={"max_lm_calls": 20}))
    assert tiny.status_code == 400 and tiny.json()["field"] == "budget.max_lm_calls", tiny.text
    assert "the test evaluation alone needs 24" in tiny.json()["detail"]


def test_a_users_default_budget_applies_to_a_job_without_its_own(stack, local_lm):
    name = f"budgeted-{uuid.uuid4().hex[:6]}"
    user = stack.add_user(name)
    bad = user.put("/users/me/budget", json={"budget": {"max_lm_calls": 0}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "budget.max_lm_calls", bad.text
    assert user.put(f"/users/{name}/budget", json={"budget": {"max_lm_calls": 27}}).status_code == 403
    # The user's own default, too small for the test evaluation (2 × 12 test rows): a 400 at submit.
    assert user.put("/users/me/budget", json={"budget": {"max_lm_calls": 20}}).json()["budget"] == {"max_lm_calls": 20}
    payload = payload_led_by(local_lm.url, easy=True, count=3)
    del payload["username"]
    model = own_model(payload, local_lm.url)
    tiny = user.post("/run", json=payload)
    assert tiny.status_code == 400 and tiny.json()["field"] == "budget.max_lm_calls", tiny.text
    detail = tiny.json()["detail"]
    assert detail.startswith(f"the default budget of {name} (PUT /users/me/budget) does not fit"), detail

    # The operator's default: the job stops within it, and says where its budget came from.
    assert stack.api.put(f"/users/{name}/budget", json={"budget": {"max_lm_calls": 27}}).status_code == 200
    assert user.get("/users/me/budget").json() == {"username": name, "budget": {"max_lm_calls": 27}}
    answer = user.post("/run", json=payload)
    assert answer.status_code == 201, answer.text
    summary = stack.wait_terminal(answer.json()["job_id"])
    assert summary["status"] == "success" and summary["termination_reason"] == "budget_exhausted", summary
    budget = summary["budget"]
    assert budget["source"] == "user_default" and budget["limits"] == {"max_lm_calls": 27}, budget
    assert budget["used"]["lm_calls"] == calls_of(local_lm, model) == 27, budget
