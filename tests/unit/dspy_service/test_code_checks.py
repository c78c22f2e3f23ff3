"""Static checks of the user's signature and metric code (parsed, never run)."""

import pytest

from dspy_service.code_checks import check_fields_against_mapping, find_metric_name, outline_signature
from dspy_service.errors import JobError

SIGNATURE = """
class QA(dspy.Signature):
    \"\"\"Answer the question.\"\"\"
    question: str = dspy.InputField()
    answer: str = dspy.OutputField()
"""


def test_signature_outline_and_errors():
    outline = outline_signature(SIGNATURE)
    assert (outline.name, outline.input_fields, outline.output_fields) == ("QA", ["question"], ["answer"])
    with pytest.raises(JobError, match="defines 2 dspy.Signature subclasses"):
        outline_signature(SIGNATURE + SIGNATURE.replace("QA", "QB"))
    with pytest.raises(JobError, match="defines no dspy.Signature subclass"):
        outline_signature("x = 1")
    with pytest.raises(JobError, match="syntax error at line 2"):
        outline_signature("class A(dspy.Signature):\n  x: str = = 1\n")


def test_metric_name_rules():
    assert find_metric_name("def helper(x): return x\ndef metric(a, b, t=None): return 1") == "metric"
    assert find_metric_name("def exact(a, b, t=None): return 1") == "exact"
    with pytest.raises(JobError, match="no metric function"):
        find_metric_name("x = 1")
    with pytest.raises(JobError, match="none is named `metric`"):
        find_metric_name("def a(x): pass\ndef b(x): pass")


def test_mapping_against_signature_fields():
    outline = outline_signature(SIGNATURE)
    with pytest.raises(JobError, match="has no input field 'query'"):
        check_fields_against_mapping(outline, {"query": "q"}, {})
    with pytest.raises(JobError, match="has no output field 'label'"):
        check_fields_against_mapping(outline, {"question": "q"}, {"label": "a"})
