"""Counting a test evaluation's errors per cause."""

from __future__ import annotations

import pytest

from tasks.evaluate import EvaluationFailed, check_error_share
from tasks.evaluation_errors import ErrorTally, counting


class ContextWindowExceededError(Exception):
    pass


def overflow(tokens: int) -> Exception:
    return ContextWindowExceededError(f"request ({tokens} tokens) exceeds the available context size (1024 tokens)")


def test_messages_that_differ_only_in_numbers_are_one_cause_and_secrets_are_scrubbed():
    tally = ErrorTally(secrets=["sk-secret-123"], examples=12)
    for tokens in (1360, 1412, 1500):
        tally.record(overflow(tokens))
    tally.record(ValueError("bad key sk-secret-123"))
    assert tally.count == 4
    top = tally.top()
    assert top[0] == {"error": "ContextWindowExceededError: request (1360 tokens) exceeds the available context "
                      "size (1024 tokens)", "count": 3}
    assert top[1] == {"error": "ValueError: bad key ***", "count": 1}
    described = tally.describe("optimized")
    assert described.startswith("4 of 12 test examples of the optimized program failed; most often (3)"), described


def test_counting_records_and_reraises():
    tally = ErrorTally()

    def boom(**_):
        raise overflow(2000)

    with pytest.raises(ContextWindowExceededError):
        counting(boom, tally)(question="x")
    assert counting(lambda **kw: kw, tally)(a=1) == {"a": 1}
    assert tally.count == 1


def test_the_error_limit_is_the_optimized_program_s():
    baseline, optimized = ErrorTally(examples=10), ErrorTally(examples=10)
    for _ in range(9):
        baseline.record(overflow(1))
    # A baseline that mostly fails (zero-shot answers a small model cannot format) is counted,
    # and is what optimizing is for: the job goes on.
    check_error_share({"baseline": baseline, "optimized": optimized}, 0.5)
    for _ in range(6):
        optimized.record(overflow(1))
    with pytest.raises(EvaluationFailed) as failed:
        check_error_share({"baseline": baseline, "optimized": optimized}, 0.5)
    assert str(failed.value).startswith("evaluation failed: 6 of 10 test examples of the optimized program failed")
    assert failed.value.errors["baseline"]["errors"] == 9
