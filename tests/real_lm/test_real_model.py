"""Jobs on a real small model, through the real stack (sandboxed jobs, real Prefect and DSPy):
SmolLM2-135M-Instruct served by llama.cpp with 1024 tokens of context (tests/real_lm/conftest.py).

What a user of a real, weak, local model meets: an optimization that works and a program
that loads; a context too small for the demos asked for; an answer length given in
`extra`; the model's server dying mid-job; MIPROv2's proposer, whose prompts this model
cannot answer in the expected format. Each job uses an API key of its own, so it starts from
a cold LM cache and really calls the model; the model answers greedily, so the outcomes
repeat. Sizes (rows, demos, max_tokens) keep the whole module within a few minutes on 2 cores.
"""

from __future__ import annotations

import time
import uuid

import dspy
import pytest

from dspy_service.client.program import build_program
from dspy_service.testing.real_lm import MODEL_NAME, sentiment_job
from tests.real_lm.conftest import serve_real_lm
from tests.support.polling import wait_until
from tests.support.stack import TERMINAL

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.real_lm]

CONTEXT_EXCEEDED = "exceeds the available context size"


def own_key() -> str:
    return f"sk-{uuid.uuid4().hex}"


def artifact_of(stack, job_id: str) -> dict:
    answer = stack.api.get(f"/jobs/{job_id}/artifact")
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_bootstrap_predict_succeeds_and_its_program_loads(real_stack, real_lm):
    job_id = real_stack.submit(sentiment_job(real_lm.url, api_key=own_key()))
    summary = real_stack.wait_terminal(job_id, timeout=240)
    assert summary["status"] == "success", summary
    usage = summary["usage"]
    assert usage["calls"] > 0 and usage["cost"] == 0 and usage["cost_known"], usage

    artifact = artifact_of(real_stack, job_id)
    program = build_program(artifact["program_source"], artifact["program_artifact"]["program_state"])
    assert isinstance(program, dspy.Predict) and program.demos, "the optimized program carries its demos"
    lm = dspy.LM(MODEL_NAME, api_base=real_lm.url, api_key="local", temperature=0.0, max_tokens=48, cache=False)
    with dspy.context(lm=lm):
        answer = program(review="The blender is excellent, I use it every morning.")
    assert isinstance(answer.sentiment, str) and answer.sentiment.strip(), answer


def test_cot_with_more_demos_than_the_context_holds_keeps_its_program_and_says_why(real_stack, real_lm):
    """16 labeled demos (and ChainOfThought's reasoning) do not fit in 1024 tokens: the
    overflowing examples score 0 and are counted; past the error limit (half the
    examples) the job fails naming the context size, and keeps its compiled program."""
    payload = sentiment_job(
        real_lm.url, rows=40, api_key=own_key(), module_name="cot",
        optimizer_kwargs={"max_bootstrapped_demos": 1, "max_labeled_demos": 16},
    )
    payload["model_config"]["max_tokens"] = 64
    job_id = real_stack.submit(payload)
    summary = real_stack.wait_terminal(job_id, timeout=240)
    errors = summary["evaluation_errors"]["optimized"]
    assert errors["errors"] > 0 and CONTEXT_EXCEEDED in errors["top_errors"][0]["error"], errors

    assert summary["status"] == "failed", summary
    assert summary["message"].startswith(f"evaluation failed: {errors['errors']} of {errors['examples']} test"), summary
    assert CONTEXT_EXCEEDED in summary["message"] and "Execution cancelled" not in summary["message"], summary
    artifact = artifact_of(real_stack, job_id)
    assert artifact["kept_after_failure"]["message"] == summary["message"]
    program = build_program(artifact["program_source"], artifact["program_artifact"]["program_state"])
    assert len(program.predict.demos) == 16, "the kept program is the compiled one, with its 16 demos"


def test_max_tokens_given_in_extra_reaches_the_model_and_a_conflict_is_refused(real_stack, real_lm):
    payload = sentiment_job(real_lm.url, rows=12, api_key=own_key(), optimizer_kwargs={"max_bootstrapped_demos": 1})
    del payload["model_config"]["max_tokens"]
    payload["model_config"]["extra"]["max_tokens"] = 16
    summary = real_stack.wait_terminal(real_stack.submit(payload), timeout=240)
    assert summary["status"] == "success", summary
    usage = summary["usage"]
    assert 0 < usage["completion_tokens"] <= 16 * usage["calls"], f"answers are cut at 16 tokens: {usage}"

    payload["model_config"]["max_tokens"] = 48  # and 16 in extra
    refused = real_stack.api.post("/run", json=payload)
    assert refused.status_code == 400, refused.text
    assert refused.json()["field"] == "model_config.extra.max_tokens", refused.text


def wait_for_calls(stack, job_id: str, calls: int, timeout: float = 180) -> None:
    last: dict = {}

    def called() -> bool:
        last.update(stack.api.get(f"/jobs/{job_id}/summary").json())
        assert last["status"] not in TERMINAL, f"the job ended before the model was killed: {last}"
        return (last.get("usage") or {}).get("calls", 0) >= calls

    wait_until(called, timeout, 0.5, what=lambda: f"job {job_id} to make {calls} LM calls: {last.get('usage')}")


def test_killing_the_model_server_mid_job_fails_the_job_fast_naming_the_endpoint(
    real_stack, spare_lm_port, tmp_path
):
    """SIGKILL of the model's server while the job calls it: the first failed call waits out
    its retries (1 + 2 + 4 + 8 + 16 s by default), the next ones fail at once, and after 8
    refused calls in a row the job fails (it used to stay running for minutes)."""
    doomed = serve_real_lm(tmp_path / "doomed-lm.log", port=spare_lm_port)
    try:
        job_id = real_stack.submit(sentiment_job(doomed.url, rows=40, api_key=own_key()))
        wait_for_calls(real_stack, job_id, 2)
    finally:
        doomed.kill()
    killed = time.monotonic()
    summary = real_stack.wait_terminal(job_id, timeout=180)
    took = time.monotonic() - killed
    assert summary["status"] == "failed", summary
    assert f"LM endpoint {doomed.url} unreachable: connection refused (8 calls)" in summary["message"], summary
    assert took < 75, f"the job took {took:.0f} s to fail after its model died"
    assert summary["usage"]["errors"] >= 8, summary["usage"]


def test_miprov2_returns_its_best_program_or_says_what_to_change(real_stack, real_lm):
    """This model does not answer MIPROv2's instruction proposals in the expected format:
    the job returns the best program it had (`optimizer_error`), or, with none yet, fails
    saying so and what to change."""
    payload = sentiment_job(
        real_lm.url, rows=20, api_key=own_key(), optimizer_name="miprov2",
        optimizer_kwargs={"auto": "light", "max_bootstrapped_demos": 1, "max_labeled_demos": 1},
    )
    job_id = real_stack.submit(payload)
    summary = real_stack.wait_terminal(job_id, timeout=240)
    if summary["status"] == "success":
        result = real_stack.api.get(f"/jobs/{job_id}").json()["result"]
        assert result["details"]["termination_reason"] == "optimizer_error", result["details"]
        assert artifact_of(real_stack, job_id)["program_artifact"]["program_state"]
    else:
        assert summary["status"] == "failed", summary
        assert summary["message"].startswith("MIPROv2 could not propose instructions"), summary["message"]
