"""Real DSPy optimizers against the project's local LM, orchestrated by Prefect."""

import pytest

from tests.support.flow_runner import run_flow
from tests.support.payloads import STAGES, job_payload, light_optimizer_payload


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


# What each optimizer keeps of its search in optimization_metadata (a key path), and the
# model roles besides the main one that it calls.
KEPT = {
    "miprov2": (("trials",), ()),
    "gepa": (("gepa", "val_aggregate_scores"), ("reflection",)),
    "bootstrap_random_search": (("candidate_scores",), ()),
}


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", list(KEPT))
def test_cot_light_optimizers_keep_their_search(local_lm, optimizer):
    payload = light_optimizer_payload(local_lm.url, optimizer)
    result = assert_complete_result(run_flow(payload), payload)
    path, roles = KEPT[optimizer]
    kept = result["optimization_metadata"]
    for key in path:
        kept = kept[key]
    assert kept, f"{optimizer}'s {'.'.join(path)} are kept"
    by_role = result["details"]["usage"]["by_role"]
    assert all(by_role[role]["calls"] > 0 for role in roles), by_role
