"""Real DSPy optimizers against the project's local LM, orchestrated by Prefect."""

import pytest

from tests.engine.runner import run_flow
from tests.helpers import STAGES, job_payload, model_config


def assert_complete_result(outcome, payload):
    assert outcome.state.is_completed(), outcome.message
    result = outcome.result
    rows = len(payload["dataset"])
    counts = result["split_counts"]
    assert sum(counts.values()) == rows and min(counts.values()) > 0
    assert result["baseline_test_metric"] is not None and result["optimized_test_metric"] is not None
    assert result["metric_improvement"] == pytest.approx(
        result["optimized_test_metric"] - result["baseline_test_metric"], abs=1e-6
    )
    assert result["module_name"] == payload["module_name"]
    assert result["optimizer_name"] == payload["optimizer_name"]
    assert result["metric_name"] == "metric"
    assert result["program_artifact"]["program_pickle_base64"]
    return result


def test_predict_bootstrap_beats_baseline_in_six_task_runs(local_lm):
    payload = job_payload(local_lm.url, rows=60)
    outcome = run_flow(payload)
    result = assert_complete_result(outcome, payload)
    assert result["optimized_test_metric"] > result["baseline_test_metric"]
    assert outcome.task_run_names() == STAGES
    usage = result["details"]["usage"]["total"]
    assert usage["calls"] > 0 and usage["prompt_tokens"] > 0


@pytest.mark.slow
def test_cot_miprov2_light(local_lm):
    payload = job_payload(
        local_lm.url,
        rows=40,
        module_name="cot",
        optimizer_name="miprov2",
        optimizer_kwargs={"auto": "light", "max_bootstrapped_demos": 2, "max_labeled_demos": 2},
    )
    result = assert_complete_result(run_flow(payload), payload)
    assert result["optimization_metadata"]["trials"], "MIPROv2 trial scores are kept"


@pytest.mark.slow
def test_cot_gepa_light_with_reflection_model(local_lm):
    payload = job_payload(
        local_lm.url,
        rows=30,
        module_name="cot",
        optimizer_name="gepa",
        optimizer_kwargs={"auto": "light"},
        reflection_model_config=model_config(local_lm.url, name="openai/local-reflection"),
    )
    result = assert_complete_result(run_flow(payload), payload)
    gepa = result["optimization_metadata"]["gepa"]
    assert gepa["val_aggregate_scores"], "GEPA's per-candidate validation scores are kept"
    assert result["details"]["usage"]["by_role"]["reflection"]["calls"] > 0


@pytest.mark.slow
def test_cot_bootstrap_random_search(local_lm):
    payload = job_payload(
        local_lm.url,
        rows=40,
        module_name="cot",
        optimizer_name="bootstrap_random_search",
        optimizer_kwargs={"num_candidate_programs": 2, "max_bootstrapped_demos": 2, "max_labeled_demos": 2},
    )
    result = assert_complete_result(run_flow(payload), payload)
    assert result["optimization_metadata"]["candidate_scores"]
