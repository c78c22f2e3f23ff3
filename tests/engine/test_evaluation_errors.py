"""Errors inside the test evaluation: counted, not fatal up to a limit, and never losing
the compiled program (the flow in-process, real DSPy, the local LM over HTTP)."""

from __future__ import annotations

import pytest

from tests.support.flow_runner import run_flow
from tests.support.payloads import TEST_ROWS, payload_failing_on


def test_an_evaluation_with_some_errored_examples_succeeds_and_counts_them(local_lm):
    outcome = run_flow(payload_failing_on(local_lm.url, failing=4))  # 33 %
    assert outcome.state.is_completed(), outcome.message
    errors = outcome.result["details"]["evaluation_errors"]
    for program in ("baseline", "optimized"):
        assert errors[program]["errors"] == 4 and errors[program]["examples"] == TEST_ROWS, errors
        top = errors[program]["top_errors"][0]
        assert top["count"] == 4 and "the grader cannot read this example" in top["error"], top
    assert outcome.result["optimized_test_metric"] <= (TEST_ROWS - 4) / TEST_ROWS


def test_an_evaluation_with_most_examples_errored_fails_naming_the_cause_and_keeps_the_program(local_lm):
    outcome = run_flow(payload_failing_on(local_lm.url, failing=10))  # 83 %
    assert outcome.state.is_failed()
    message = outcome.message
    assert message.startswith("evaluation failed: 10 of 12 test examples of the"), message
    assert "the grader cannot read this example" in message and "Execution cancelled" not in message, message
    kept = outcome.state.result(raise_on_failure=False)
    assert isinstance(kept, dict), kept
    assert kept["program_artifact"]["program_state"], "the compiled program is kept"
    assert kept["details"]["evaluation_errors"]["optimized"]["errors"] == 10
    assert kept["optimized_test_metric"] is None


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_the_error_limit_is_a_setting(local_lm, monkeypatch, share):
    from dspy_service.settings import get_settings

    monkeypatch.setenv("DSPY_SERVICE_EVALUATION_ERROR_LIMIT", str(share))
    get_settings.cache_clear()
    try:
        outcome = run_flow(payload_failing_on(local_lm.url, failing=1))
    finally:
        get_settings.cache_clear()
    assert outcome.state.is_failed() == (share == 0.0), outcome.message
