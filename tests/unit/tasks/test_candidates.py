"""The best candidate so far and the parse counts an optimizer leaves behind (tasks/candidates.py),
and when a job goes on with that candidate (tasks/optimizer_failure.py)."""

from __future__ import annotations

import dspy
import pytest
from dspy.utils.exceptions import AdapterParseError

from dspy_service.errors import JobError
from tasks import stopping
from tasks.candidates import CandidateTracker
from tasks.optimizer_failure import keeps_best_so_far, parse_failure_message


class Proposal(dspy.Signature):  # as if defined by DSPy's proposer
    """Propose an instruction."""

    task: str = dspy.InputField()
    proposed_instruction: str = dspy.OutputField()


Proposal.__module__ = "dspy.propose.grounded_proposer"


class Answer(dspy.Signature):  # a user's signature with the same field name
    question: str = dspy.InputField()
    proposed_instruction: str = dspy.OutputField()


def evaluated(tracker: CandidateTracker, program: dspy.Module, score: float, metadata: dict | None = None) -> None:
    call = f"call-{id(program)}-{score}"
    tracker.on_evaluate_start(call, None, {"program": program, "callback_metadata": metadata})
    tracker.on_evaluate_end(call, dspy.Prediction(score=score, results=[]))


def test_the_best_whole_set_score_wins_and_minibatches_do_not_count():
    tracker = CandidateTracker()
    first, second, noisy = dspy.Predict("q -> a"), dspy.Predict("q -> a"), dspy.Predict("q -> a")
    evaluated(tracker, first, 50.0, {"metric_key": "eval_full"})
    evaluated(tracker, noisy, 100.0, {"metric_key": "eval_minibatch"})
    evaluated(tracker, noisy, 100.0, {"disable_logging": True})
    evaluated(tracker, second, 75.0)
    evaluated(tracker, first, 75.0)  # a tie keeps the first
    assert tracker.evaluations == 3
    assert tracker.best.score == 75.0
    assert tracker.best.program is not second  # a copy: the optimizer may change its own


def test_an_evaluation_that_raised_is_not_a_candidate():
    tracker = CandidateTracker()
    tracker.on_evaluate_start("c", None, {"program": dspy.Predict("q -> a")})
    tracker.on_evaluate_end("c", None, exception=RuntimeError("boom"))
    assert tracker.best is None and tracker.evaluations == 0


@pytest.fixture
def tracker_with_a_candidate():
    tracker = CandidateTracker()
    evaluated(tracker, dspy.Predict("q -> a"), 60.0)
    yield tracker
    stopping.reset()


def test_the_job_goes_on_with_it_only_after_an_optimizer_error(tracker_with_a_candidate):
    tracker = tracker_with_a_candidate
    assert keeps_best_so_far(RuntimeError("LM said 400"), tracker, breaker_open=False) is tracker.best
    assert keeps_best_so_far(RuntimeError("refused"), tracker, breaker_open=True) is None
    assert keeps_best_so_far(JobError("the metric always fails"), tracker, breaker_open=False) is None
    assert keeps_best_so_far(MemoryError(), tracker, breaker_open=False) is None
    stopping.request_stop()
    assert keeps_best_so_far(RuntimeError("stopped"), tracker, breaker_open=False) is None
    assert keeps_best_so_far(RuntimeError("x"), CandidateTracker(), breaker_open=False) is None


def test_an_unparsable_proposal_names_the_phase_the_counts_and_the_fix_without_secrets():
    tracker = CandidateTracker()
    for call in ("a", "b", "c"):
        tracker.on_adapter_parse_start(call, None, {"signature": Proposal, "completion": "..."})
    tracker.on_adapter_parse_end("a", {"proposed_instruction": "Be brief."})
    for call in ("b", "c"):
        tracker.on_adapter_parse_end(call, None, exception=ValueError("no field"))
    error = AdapterParseError("ChatAdapter", Proposal, "Sure! key sk-secret-123 " + "x" * 200)
    message = parse_failure_message("MIPROv2", error, tracker, ["sk-secret-123"])
    assert message.startswith(
        "MIPROv2 could not propose instructions: the prompt model answered without the "
        "`proposed_instruction` field 2 of 3 times (it answered 'Sure! key *** xxx"
    ), message
    assert message.endswith("…'); use a stronger `prompt_model_config`")
    assert "sk-secret-123" not in message


def test_a_user_signature_that_does_not_parse_is_about_the_model_not_a_phase():
    error = AdapterParseError("ChatAdapter", Answer, "no idea")
    message = parse_failure_message("BootstrapFewShot", error, CandidateTracker(), [])
    assert message == (
        "BootstrapFewShot could not run the program: the model answered without the `proposed_instruction` field "
        "(it answered 'no idea'); use a stronger `model_config`, or fewer demos (`max_labeled_demos`)"
    )
