"""DSPy objects -> POST /run bodies: the code the client sends runs and means the same."""

from __future__ import annotations

import typing

import dspy
import pandas as pd
import pydantic
import pytest

from dspy_service.client import payload
from dspy_service.client.program import build_program, signature_from_code
from dspy_service.schemas import JobRequest
from tests.unit.dspy_service.client import sample_code


def run_code(code: str) -> dict:
    namespace: dict = {"__name__": "sent_code"}
    exec(compile(code, "<sent>", "exec", dont_inherit=True), namespace)  # noqa: S102 - code this test built
    return namespace


def test_signature_code_round_trips_fields_types_descriptions_and_instructions():
    class Quiz(dspy.Signature):
        """Pick the right choice."""

        question: str = dspy.InputField(desc="the question")
        choices: list[str] = dspy.InputField()
        answer: typing.Literal["a", "b"] = dspy.OutputField(desc="one letter")

    rebuilt = signature_from_code(payload.signature_code(Quiz))
    assert rebuilt.__name__ == "Quiz"
    assert rebuilt.instructions == "Pick the right choice."
    assert list(rebuilt.input_fields) == ["question", "choices"]
    assert rebuilt.input_fields["choices"].annotation == list[str]
    assert rebuilt.output_fields["answer"].annotation == typing.Literal["a", "b"]
    assert rebuilt.input_fields["question"].json_schema_extra["desc"] == "the question"
    assert rebuilt.output_fields["answer"].json_schema_extra["desc"] == "one letter"


def test_chain_of_thought_sends_its_own_signature_without_reasoning():
    module_name, kwargs, signature = payload.program_parts(dspy.ChainOfThought(sample_code.Arithmetic))
    assert (module_name, kwargs) == ("cot", {})
    assert list(signature.output_fields) == ["answer"]
    assert payload.program_parts(dspy.Predict("question -> answer"))[0] == "predict"


def test_a_module_class_registered_by_name_is_sent_by_that_name(monkeypatch):
    from dspy_service.registry import ServiceRegistry

    class Twice(dspy.Module):
        def __init__(self, signature):
            super().__init__()
            self.first = dspy.Predict(signature)

    registry = ServiceRegistry()
    registry.register_module("twice", Twice)
    monkeypatch.setattr("dspy_service.registry.get_registry", lambda: registry)
    module_name, _, signature = payload.program_parts(Twice(sample_code.Arithmetic))
    assert module_name == "twice" and signature is sample_code.Arithmetic


def test_other_modules_are_refused_with_what_to_do():
    with pytest.raises(ValueError, match="module_name"):
        payload.program_parts(dspy.ReAct("question -> answer", tools=[]))
    with pytest.raises(ValueError, match="dspy module instance"):
        payload.program_parts(sample_code.Arithmetic)


def test_a_type_that_cannot_be_code_names_the_field():
    class Custom(pydantic.BaseModel):
        value: int

    sig = dspy.Signature({"thing": (Custom, dspy.InputField()), "answer": (str, dspy.OutputField())})
    with pytest.raises(ValueError, match="'thing'"):
        payload.signature_code(sig)


def test_metric_code_carries_its_helpers_constants_and_imports():
    code = payload.metric_code(sample_code.metric)
    namespace = run_code(code)
    example, pred = dspy.Example(answer=" 42 "), dspy.Prediction(answer="42")
    assert namespace["metric"](example, pred) is True
    assert "import math" in code and "THRESHOLD = 0.5" in code and "def normalize" in code


def test_a_metric_not_named_metric_is_bound_to_that_name():
    namespace = run_code(payload.metric_code(sample_code.exact_match))
    assert namespace["metric"](dspy.Example(answer="1"), dspy.Prediction(answer="1")) == 1.0


@pytest.mark.parametrize(
    ("metric", "words"),
    [
        (lambda e, p, t=None: 1.0, "lambda"),
        (sample_code.make_closure(3), "enclosing function (limit)"),
        (sample_code.uses_pattern, "global 'PATTERN'"),
        (len, "plain function"),
    ],
)
def test_metrics_that_cannot_travel_get_a_value_error_naming_what_to_change(metric, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        payload.metric_code(metric)


def test_rows_from_examples_dicts_and_frames():
    frame = pd.DataFrame({"question": ["1+1", "2+2"], "answer": [2, 4]})
    assert payload.as_rows(frame, "trainset") == [{"question": "1+1", "answer": 2}, {"question": "2+2", "answer": 4}]
    examples = [dspy.Example(question="1+1", answer="2").with_inputs("question")]
    assert payload.as_rows(examples, "trainset") == [{"question": "1+1", "answer": "2"}]
    with pytest.raises(ValueError, match=r"trainset\[0\] is a str"):
        payload.as_rows(["x"], "trainset")
    with pytest.raises(ValueError, match="trainset is empty"):
        payload.as_rows([], "trainset")


def test_column_mapping_is_inferred_and_a_missing_input_is_named():
    rows = [{"question": "q", "answer": "a", "other": 1}]
    assert payload.column_mapping(sample_code.Arithmetic, rows) == {
        "inputs": {"question": "question"},
        "outputs": {"answer": "answer"},
    }
    with pytest.raises(ValueError, match="input\\(s\\) question"):
        payload.column_mapping(sample_code.Arithmetic, [{"q": "x"}])


def test_given_val_and_test_sets_are_split_exactly_as_given():
    rows, fields = payload.split_rows([{"i": n} for n in range(7)], [{"i": 7}, {"i": 8}], [{"i": 9}])
    spec = JobRequest.model_validate(
        {
            "module_name": "predict",
            "signature_code": "x",
            "metric_code": "x",
            "optimizer_name": "bootstrap",
            "column_mapping": {"inputs": {"i": "i"}},
            "model_config": {"name": "m"},
            "dataset": rows,
            **fields,
        }
    )
    assert spec.shuffle is False
    assert spec.split_fractions.counts(len(rows)) == {"train": 7, "val": 2, "test": 1}


def test_an_lms_key_becomes_a_credential_never_part_of_the_body():
    stored = []
    lm = dspy.LM("openai/local", api_base="http://127.0.0.1:9/v1", api_key="sk-secret-1234", temperature=0.3)
    config = payload.model_config(lm, lambda name, key: stored.append((name, key)))
    assert "sk-secret-1234" not in repr(config)
    assert config["name"] == "openai/local" and config["base_url"] == "http://127.0.0.1:9/v1"
    assert config["temperature"] == 0.3
    assert stored == [(config["credential"], "sk-secret-1234")]
    assert payload.model_config(lm, lambda *a: None)["credential"] == config["credential"]  # stable name
    assert payload.model_config("openai/gpt-4o-mini", lambda *a: None) == {"name": "openai/gpt-4o-mini"}
    with pytest.raises(ValueError, match="model must be"):
        payload.model_config(3, lambda *a: None)


def test_optimize_body_is_a_valid_run_request_and_raw_fields_win():
    body = payload.optimize_body(
        dspy.Predict(sample_code.Arithmetic),
        sample_code.metric,
        [{"question": "1+1", "answer": "2"}] * 10,
        store_key=lambda *a: None,
        optimizer="bootstrap",
        optimizer_kwargs=None,
        valset=None,
        testset=None,
        model="openai/x",
        reflection_model=None,
        split={"train": 0.6, "val": 0.2, "test": 0.2},
        seed=3,
        name="nightly",
        raw={"timeout_seconds": 60},
    )
    request = JobRequest.model_validate(body)
    assert request.name == "nightly" and request.seed == 3 and request.timeout_seconds == 60
    assert request.column_mapping.inputs == {"question": "question"}
    with pytest.raises(ValueError, match="model is required"):
        payload.optimize_body(
            dspy.Predict(sample_code.Arithmetic),
            sample_code.metric,
            [{"question": "q"}],
            store_key=lambda *a: None,
            optimizer="bootstrap",
            optimizer_kwargs=None,
            valset=None,
            testset=None,
            model=None,
            reflection_model=None,
            split=None,
            seed=None,
            name=None,
            raw={},
        )


def test_build_program_loads_json_state_into_a_fresh_module():
    source = {
        "module_name": "cot",
        "module_kwargs": {},
        "signature_code": payload.signature_code(sample_code.Arithmetic),
    }
    original = build_program(source)
    original.predict.demos = [dspy.Example(question="1+1", reasoning="add", answer="2")]
    original.predict.signature = original.predict.signature.with_instructions("Be exact.")
    rebuilt = build_program(source, original.dump_state())
    assert rebuilt.predict.signature.instructions == "Be exact."
    assert rebuilt.predict.demos[0]["answer"] == "2"
    with pytest.raises(ValueError, match="exactly one dspy.Signature"):
        signature_from_code("x = 1")
