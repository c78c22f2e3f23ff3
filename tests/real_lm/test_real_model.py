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

import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dspy
import pytest

from dspy_service.client.program import build_program
from dspy_service.testing.real_lm import MODEL_NAME, sentiment_job
from tests.support.polling import wait_until
from tests.support.real_lm import serve_real_lm
from tests.support.stack import TERMINAL

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.real_lm]

CONTEXT_EXCEEDED = "exceeds the available context size"
REPO = Path(__file__).resolve().parents[2]


def own_key() -> str:
    return f"sk-{uuid.uuid4().hex}"


def artifact_of(stack, job_id: str) -> dict:
    answer = stack.api.get(f"/jobs/{job_id}/artifact")
    assert answer.status_code == 200, answer.text
    return answer.json()


def run_real_model_demo(stack, port: int) -> subprocess.CompletedProcess:
    """`dspy-service demo --real-model` against the stack, serving the model on `port`."""
    token = stack.api.headers["Authorization"].removeprefix("Bearer ")
    command = [
        sys.executable, "-m", "deployments.cli", "demo", "--real-model", "--real-model-port", str(port),
        "--url", stack.stack.config.api_url, "--token", token,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)


def test_the_real_model_demo_runs_bootstrap_predict_and_its_program_loads(real_stack, real_lm, demo_lm_port):
    """`dspy-service demo --real-model` serves the model itself and runs BootstrapFewShot
    with `predict` on it; the job succeeds and its program, rebuilt from the artifact,
    answers with the real model."""
    demo = run_real_model_demo(real_stack, demo_lm_port)
    assert demo.returncode == 0, demo.stdout + demo.stderr[-3000:]
    job_id = re.search(r"demo job (\S+) submitted", demo.stdout).group(1)
    assert "demo job succeeded: test accuracy" in demo.stdout, demo.stdout
    summary = real_stack.api.get(f"/jobs/{job_id}/summary").json()
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
    """ChainOfThought with up to 16 labeled demos (12 here, the whole train split) needs about
    1200 tokens a prompt, over the model's 1024: every test example of the optimized program
    overflows and scores 0, counted; past the error limit (half the examples) the job fails
    naming the context size, and keeps its compiled program. (The teacher's bootstrapping
    prompts hold the same demos: `max_errors` lets BootstrapFewShot finish with labeled
    demos only, instead of stopping at its default of 10 errors.)"""
    payload = sentiment_job(
        real_lm.url, rows=24, api_key=own_key(), module_name="cot",
        optimizer_kwargs={"max_bootstrapped_demos": 1, "max_labeled_demos": 16, "max_errors": 100},
    )
    payload["model_config"]["max_tokens"] = 64
    job_id = real_stack.submit(payload)
    summary = real_stack.wait_terminal(job_id, timeout=240)
    errors = summary["evaluation_errors"]["optimized"]
    assert errors["errors"] == errors["examples"] > 0, errors
    assert CONTEXT_EXCEEDED in errors["top_errors"][0]["error"], errors
    baseline = summary["evaluation_errors"]["baseline"]["top_errors"]
    assert not any(CONTEXT_EXCEEDED in cause["error"] for cause in baseline), "the zero-shot program fits"

    assert summary["status"] == "failed", summary
    failed = f"{errors['errors']} of {errors['errors']} test examples of the optimized program failed"
    assert summary["message"].startswith(f"evaluation failed: {failed}"), summary
    assert CONTEXT_EXCEEDED in summary["message"] and "Execution cancelled" not in summary["message"], summary
    artifact = artifact_of(real_stack, job_id)
    assert artifact["kept_after_failure"]["message"] == summary["message"]
    program = build_program(artifact["program_source"], artifact["program_artifact"]["program_state"])
    assert len(program.predict.demos) == 12, "the kept program is the compiled one, with its demos"


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
    print(f"the job failed {took:.1f} s after its model was killed")
    assert summary["status"] == "failed", summary
    assert f"LM endpoint {doomed.url} unreachable: connection refused (8 calls)" in summary["message"], summary
    assert took < 60, f"the job took {took:.0f} s to fail after its model died"
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
