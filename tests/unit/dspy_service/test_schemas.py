"""The POST /run request model: defaults, aliases, and shape errors that name the field."""

import pytest
from pydantic import ValidationError

from dspy_service.schemas import JobRequest, SplitFractions

SIGNATURE = """
class QA(dspy.Signature):
    \"\"\"Answer the question.\"\"\"
    question: str = dspy.InputField()
    answer: str = dspy.OutputField()
"""


def payload(**overrides):
    body = {
        "module_name": "predict",
        "signature_code": SIGNATURE,
        "metric_code": "def metric(example, pred, trace=None):\n    return 1.0\n",
        "optimizer_name": "bootstrap",
        "dataset": [{"q": "x", "a": "y"}],
        "column_mapping": {"inputs": {"question": "q"}, "outputs": {"answer": "a"}},
        "model_config": {"name": "openai/local", "model_type": "chat"},
    }
    body.update(overrides)
    return body


def test_defaults_aliases_and_unknown_keys():
    request = JobRequest.model_validate(payload(some_future_field=1))
    assert request.username == "anonymous"
    assert request.split_fractions.train == pytest.approx(0.7)
    assert request.main_model.name == "openai/local"
    assert request.main_model.model_extra == {"model_type": "chat"}
    wire = request.spec().wire()
    assert "dataset" not in wire and wire["model_config"]["name"] == "openai/local"


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"split_fractions": {"train": 0.5, "val": 0.2, "test": 0.2}}, "split_fractions"),
        ({"split_fractions": {"train": 1.2, "val": -0.1, "test": -0.1}}, "split_fractions"),
        ({"dataset": []}, "dataset"),
        ({"column_mapping": {"inputs": {}, "outputs": {}}}, "column_mapping"),
        ({"column_mapping": {"inputs": {"question": "q"}, "outputs": {"answer": "q"}}}, "column_mapping"),
        ({"model_config": {"name": "x", "temperature": 3}}, "model_config"),
        ({"model_config": None}, "model_config"),
        ({"model_config": {"name": "x", "credential": "Not A Name!"}}, "model_config"),
        ({"secret_refs": {"inline_block": "dspy-secret-someone-elses"}}, "secret_refs"),
        ({"secret_refs": {"credential_blocks": {"main": "dspy-cred-0123-prod"}}}, "secret_refs"),
    ],
)
def test_shape_errors_name_the_field(overrides, field):
    with pytest.raises(ValidationError) as info:
        JobRequest.model_validate(payload(**overrides))
    assert any(error["loc"][0] == field for error in info.value.errors())


def test_reflection_lm_kwarg_becomes_model_config():
    request = JobRequest.model_validate(payload(optimizer_kwargs={"reflection_lm": "openai/big", "auto": "light"}))
    assert request.reflection_model.name == "openai/big"
    assert request.optimizer_kwargs == {"auto": "light"}


def test_split_counts_add_up():
    assert SplitFractions().counts(100) == {"train": 70, "val": 15, "test": 15}
    assert sum(SplitFractions(train=0.6, val=0.3, test=0.1).counts(7).values()) == 7


def test_model_settings_views_are_an_allow_list():
    request = JobRequest.model_validate(
        payload(
            model_config={
                "name": "openai/local",
                "base_url": "http://lm",
                "temperature": 0.2,
                "model_type": "chat",
                "credential": "prod",
                "organization_secret": "sk-top",
                "extra": {"num_retries": 2, "input_cost_per_token": 1e-6, "api_key": "sk-1",
                          "headers": {"Authorization": "Bearer sk-2"}, "my_custom_thing": "hidden"},
            }
        )
    )
    assert request.main_model.public_settings() == {
        "base_url": "http://lm",
        "temperature": 0.2,
        "model_type": "chat",
        "credential": "prod",
        "extra": {"num_retries": 2, "input_cost_per_token": 1e-6},
    }


def test_unknown_top_level_keys_are_ignored_and_listed():
    request = JobRequest.model_validate(payload(num_thread=2, datset=[], model_config={"name": "openai/x"}))
    assert request.ignored_fields == ["datset", "num_thread"]
    assert JobRequest.model_validate(payload()).ignored_fields == []


@pytest.mark.parametrize("threads, ok", [(1, True), (16, True), (0, False), (65, False)])
def test_num_threads_is_a_bounded_job_setting(threads, ok):
    if ok:
        assert JobRequest.model_validate(payload(num_threads=threads)).spec().num_threads == threads
    else:
        with pytest.raises(ValidationError, match="num_threads"):
            JobRequest.model_validate(payload(num_threads=threads))
