"""A job's `budget` at submit (POST /run, schedules share the model): a zero or negative
limit is a 422 naming it, a `max_lm_calls` the two test evaluations alone would use up is
a 400, and a fitting budget travels with the job. In-memory gateways, no Prefect."""

from __future__ import annotations

import pytest

from tests.support.payloads import job_payload
from tests.unit.api.test_preflight import PUBLIC_LM, api  # noqa: F401 - the fixture


@pytest.mark.parametrize("field", ["max_lm_calls", "max_tokens", "max_cost_usd"])
@pytest.mark.parametrize("value", [0, -1])
def test_a_zero_or_negative_limit_is_a_422_naming_it(api, field, value):  # noqa: F811
    answer = api.post("/run", json=job_payload(PUBLIC_LM, budget={field: value}))
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["field"] == f"budget.{field}", answer.json()
    assert api.app.state.jobs.created == []


def test_an_unknown_limit_is_a_422_naming_it(api):  # noqa: F811
    answer = api.post("/run", json=job_payload(PUBLIC_LM, budget={"max_dollars": 3}))
    assert answer.status_code == 422 and answer.json()["detail"][0]["field"] == "budget.max_dollars", answer.text


def test_calls_the_test_evaluation_alone_would_use_up_are_a_400(api):  # noqa: F811
    # 40 rows, 30 % test: 12 test rows, 24 calls for the baseline and the optimized program.
    answer = api.post("/run", json=job_payload(PUBLIC_LM, rows=40, budget={"max_lm_calls": 24}))
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["field"] == "budget.max_lm_calls", body
    assert "the test evaluation alone needs 24 (2 programs × 12 test examples)" in body["detail"], body
    assert api.app.state.jobs.created == []


def test_a_budget_with_room_travels_with_the_job(api):  # noqa: F811
    budget = {"max_lm_calls": 25, "max_tokens": 10_000, "max_cost_usd": 0.5}
    answer = api.post("/run", json=job_payload(PUBLIC_LM, rows=40, budget=budget))
    assert answer.status_code in (200, 201), answer.text
    (created,) = api.app.state.jobs.created
    assert created["parameters"]["job"]["budget"] == budget


def test_a_schedule_takes_the_same_budget_checks(api):  # noqa: F811
    schedule = {**job_payload(PUBLIC_LM, budget={"max_lm_calls": 0}), "interval_seconds": 3600}
    answer = api.post("/schedules", json=schedule)
    assert answer.status_code == 422 and answer.json()["detail"][0]["field"] == "budget.max_lm_calls", answer.text
    schedule["budget"] = {"max_lm_calls": 10}  # 12 test rows of 40: the evaluation needs 24
    answer = api.post("/schedules", json=schedule)
    assert answer.status_code == 400 and answer.json()["field"] == "budget.max_lm_calls", answer.text


def test_a_token_budget_below_the_baseline_evaluation_is_a_400_from_the_estimate(api):  # noqa: F811
    estimate = api.post("/run/estimate", json=job_payload(PUBLIC_LM, rows=40)).json()
    least = estimate["stages"]["baseline_evaluation"]["total_tokens"]["low"]
    assert least > 100, estimate["stages"]
    answer = api.post("/run", json=job_payload(PUBLIC_LM, rows=40, budget={"max_tokens": least // 3}))
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == "budget.max_tokens" and "baseline evaluation" in answer.json()["detail"]
    assert api.app.state.jobs.created == []
    near = api.post("/run", json=job_payload(PUBLIC_LM, rows=40, budget={"max_tokens": least - 1}))
    assert near.status_code in (200, 201), near.text  # the estimate may count more than the model: the job decides


def test_a_dollar_budget_below_the_baseline_evaluation_is_a_400_when_the_model_has_a_price(api):  # noqa: F811
    body = job_payload(PUBLIC_LM, rows=40, budget={"max_cost_usd": 1e-6})
    answer = api.post("/run", json=body)  # no price known for the model: nothing to compare, the job decides
    assert answer.status_code in (200, 201), answer.text
    body["model_config"]["extra"] = {"input_cost_per_token": 1e-5, "output_cost_per_token": 3e-5}
    answer = api.post("/run", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == "budget.max_cost_usd", answer.json()
