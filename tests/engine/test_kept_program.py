"""A compiled program is kept before evaluation starts, so a job stopped during evaluation
(cancelled, out of time) still has it (the flow in-process, real DSPy, the local LM over
HTTP; the supervisor's kill is left out: the flow's wait for it returns at once here)."""

from __future__ import annotations

import asyncio

import dspy
import pytest

import flows.optimize
from api.kept_programs import delete_kept_program, read_kept_program
from tasks import checkpoint, stopping
from tests.support.flow_runner import run_flow
from tests.support.payloads import job_payload


@pytest.fixture(autouse=True)
def clear_stop():
    stopping.reset()
    checkpoint.reset()
    yield
    stopping.reset()
    checkpoint.reset()


def test_a_job_stopped_during_evaluation_keeps_its_compiled_program(local_lm, monkeypatch):
    real_evaluate = flows.optimize.evaluate_programs
    seen: dict = {}

    def evaluate_after_a_stop(compiled, *args, **kwargs):
        """Evaluation starts, and the supervisor asks the job to stop (a cancel)."""
        run_id = str(flows.optimize.current_flow_run.id)
        seen["kept_before_evaluation"] = asyncio.run(read_kept_program(run_id))
        stopping.request_stop()
        return real_evaluate(compiled, *args, **kwargs)

    monkeypatch.setattr(flows.optimize, "evaluate_programs", evaluate_after_a_stop)
    monkeypatch.setattr(flows.optimize, "wait_to_be_stopped", lambda: None)
    local_lm.reset()
    outcome = run_flow(job_payload(local_lm.url, rows=30))

    assert outcome.state.is_failed(), "the stop ends the job (its supervisor says cancelled)"
    before = seen["kept_before_evaluation"]
    assert before is not None, "the program is kept before evaluation starts"
    assert before["baseline_test_metric"] is None and before["details"]["compile_seconds"] > 0
    kept = asyncio.run(read_kept_program(outcome.flow_run_id))
    assert kept["program_artifact"]["program_state"] == before["program_artifact"]["program_state"]
    assert kept["runtime_seconds"] > before["runtime_seconds"], "rewritten when the job was told to stop"
    program = dspy.Predict("question -> answer")
    program.load_state(kept["program_artifact"]["program_state"])
    assert program.demos, "the compiled program's demos are kept"

    asyncio.run(delete_kept_program(outcome.flow_run_id))
    assert asyncio.run(read_kept_program(outcome.flow_run_id)) is None


def test_a_successful_job_keeps_the_same_program_it_returns(local_lm):
    outcome = run_flow(job_payload(local_lm.url, rows=20))
    assert outcome.state.is_completed(), outcome.message
    kept = asyncio.run(read_kept_program(outcome.flow_run_id))
    assert kept["program_artifact"]["program_state"] == outcome.result["program_artifact"]["program_state"]
    assert outcome.result["optimized_test_metric"] is not None and kept["optimized_test_metric"] is None
    asyncio.run(delete_kept_program(outcome.flow_run_id))
