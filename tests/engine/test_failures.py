"""A failed job says why, in the user's terms."""

import pytest

from tests.support.flow_runner import run_flow
from tests.support.payloads import job_payload

SIG = "class QA(dspy.Signature):\n    question: str = dspy.InputField()\n    answer: str = dspy.OutputField()\n"

CASES = {
    "syntax error": (
        {"signature_code": "class QA(dspy.Signature:\n    pass\n"},
        "signature_code has a syntax error at line 1",
    ),
    "two signatures": (
        {"signature_code": SIG + SIG.replace("QA", "QB")},
        "defines 2 dspy.Signature subclasses (QA, QB)",
    ),
    "no signature": ({"signature_code": "x = 1\n"}, "defines no dspy.Signature subclass"),
    "no metric": ({"metric_code": "THRESHOLD = 1\n"}, "metric_code defines no metric function"),
    "metric raises": (
        {"metric_code": "def metric(example, pred, trace=None):\n    return pred.answr == example.answer\n"},
        "metric_code line 2 (`return pred.answr == example.answer`) raised AttributeError",
    ),
    "metric returns None": (
        {"metric_code": "def metric(example, pred, trace=None):\n    pass\n"},
        "the metric returned None",
    ),
    "missing column": (
        {"column_mapping": {"inputs": {"question": "prompt"}, "outputs": {"answer": "answer"}}},
        "has no column(s) ['prompt']",
    ),
    "mapped field not in signature": (
        {"column_mapping": {"inputs": {"question": "question", "context": "answer"}, "outputs": {}}},
        "has no input field 'context'",
    ),
    "unknown module": ({"module_name": "dspy.NoSuchModule"}, "cannot find module 'dspy.NoSuchModule'"),
    "unknown optimizer": ({"optimizer_name": "annealing"}, "unknown optimizer 'annealing'"),
    "bad optimizer kwarg": (
        {"optimizer_kwargs": {"max_demos": 3}},
        "optimizer_kwargs.max_demos: bootstrap does not accept 'max_demos'",
    ),
    "gepa without reflection model": (
        {"optimizer_name": "gepa", "optimizer_kwargs": {"auto": "light"}},
        "gepa needs a reflection model",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_failed_job_names_the_cause(case, local_lm):
    overrides, expected = CASES[case]
    outcome = run_flow(job_payload(local_lm.url, rows=20, **overrides))
    assert outcome.state.is_failed()
    assert expected in outcome.message
