"""`evaluate_baseline: false` (a sweep's cell whose model's first cell scores the baseline):
the job scores only the optimized program, and the LM server's own count shows no call was
spent on the baseline (the flow in-process, real DSPy, the local LM over HTTP)."""

from __future__ import annotations

import pytest

from dspy_service.testing.local_lm import start_local_lm
from tests.support.flow_runner import run_flow
from tests.support.payloads import job_payload, tenant_model


@pytest.fixture
def lm():
    with start_local_lm() as server:
        yield server


@pytest.mark.parametrize("baseline, calls", [(False, 12), (True, 24)])
def test_a_job_without_its_baseline_pays_only_the_optimized_evaluation(lm, baseline, calls):
    # LabeledFewShot compiles without an LM call; 40 rows at 30 % test: 12 test examples.
    payload = job_payload(lm.url, rows=40, optimizer_name="labeled_few_shot", optimizer_kwargs={"k": 4},
                          model_config=tenant_model(lm.url), evaluate_baseline=baseline)
    outcome = run_flow(payload)
    assert outcome.state.is_completed(), outcome.message
    result = outcome.result
    assert lm.stats()["calls"] == calls == result["details"]["usage"]["total"]["calls"]
    assert (result["baseline_test_metric"] is not None) is baseline and result["optimized_test_metric"] is not None
    assert result["details"]["seconds_per_example"] > 0


def test_a_job_without_a_test_split_succeeds_without_scores(lm):
    """split_fractions.test 0 is allowed: nothing to score, nothing divided by zero."""
    payload = job_payload(lm.url, rows=20, optimizer_name="labeled_few_shot", optimizer_kwargs={"k": 4},
                          model_config=tenant_model(lm.url), split_fractions={"train": 0.8, "val": 0.2, "test": 0})
    outcome = run_flow(payload)
    assert outcome.state.is_completed(), outcome.message
    result = outcome.result
    assert result["split_counts"]["test"] == 0 and result["details"]["seconds_per_example"] is None
    assert lm.stats()["calls"] == 0  # LabeledFewShot compiles without the LM; no test example to score
