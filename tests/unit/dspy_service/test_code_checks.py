"""Static checks of the user's signature and metric code (parsed, never run)."""

import pytest

from dspy_service.code_checks import (
    check_code_size,
    check_fields_against_mapping,
    find_metric_name,
    outline_signature,
)
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


BOMBS = {
    "nested parentheses": "x = " + "(" * 200_000 + ")" * 200_000,
    "nested lists": "x = " + "[" * 100_000 + "]" * 100_000,
    "a chain of unary minus": "x = " + "-" * 100_000 + "1",
    "a chain of not": "x = " + "not " * 50_000 + "1",
    "nested lambdas": "x = " + "lambda: " * 10_000 + "1",
    "a long sum": "x = " + "+".join(["1"] * 100_000),
    "a long call chain": "x = f" + "()" * 100_000,
    "a long attribute chain": "class A(" + "a." * 100_000 + "Signature): pass",
    "deep indentation": "".join(" " * i + "if 1:\n" for i in range(200)) + " " * 200 + "pass\n",
    "a null byte": "x = 1\x00",
    "a lone surrogate": 'x = "\ud800"',
}


@pytest.mark.parametrize("source", BOMBS.values(), ids=BOMBS.keys())
@pytest.mark.parametrize("check, field", [(outline_signature, "signature_code"), (find_metric_name, "metric_code")])
def test_code_that_breaks_the_parser_is_a_job_error_naming_the_field(check, field, source):
    with pytest.raises(JobError) as caught:
        check(source)
    assert caught.value.field == field
    assert len(caught.value.message) < 400, "the message quotes at most a short piece of the code"


def test_a_long_attribute_chain_the_parser_accepts_is_walked_without_recursion():
    # Parses (the AST builder allows ~2000 levels) and is deeper than Python's recursion limit.
    chain = "a." * 2_000
    source = f"class QA({chain}Signature):\n    q: str = {chain}InputField()\n"
    outline = outline_signature(source)
    assert (outline.name, outline.input_fields) == ("QA", ["q"])


def test_code_size_is_capped_per_field():
    check_code_size("x" * 2048, "metric_code", max_kb=2)
    with pytest.raises(JobError, match=r"metric_code is 2 KB; this service accepts at most 1 KB") as caught:
        check_code_size("x" * 2048, "metric_code", max_kb=1)
    assert caught.value.field == "metric_code"


def test_submissions_checked_in_threads_never_parse_at_once(monkeypatch):
    """CPython 3.11's AST builder is not thread-safe (python/cpython#106905: "AST constructor
    recursion depth mismatch", a 500 on POST /run under concurrent submissions)."""
    import ast
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import dspy_service.code_checks as code_checks

    inside, most = [0], [0]
    guard = threading.Lock()
    real_parse = ast.parse

    def slow_parse(*args, **kwargs):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.01)  # long enough for the other threads to arrive
        try:
            return real_parse(*args, **kwargs)
        finally:
            with guard:
                inside[0] -= 1

    monkeypatch.setattr(code_checks.ast, "parse", slow_parse)
    source = "class QA(dspy.Signature):\n    question = dspy.InputField()\n    answer = dspy.OutputField()\n"
    with ThreadPoolExecutor(max_workers=8) as pool:
        outlines = list(pool.map(lambda _: outline_signature(source), range(16)))
    assert most[0] == 1, f"{most[0]} parses ran at once"
    assert all(o.input_fields == ["question"] and o.output_fields == ["answer"] for o in outlines)
