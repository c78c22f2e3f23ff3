"""The request model and the static checks the API runs before queueing (no user code runs)."""

import pytest
from pydantic import ValidationError

from dspy_service.code_checks import check_fields_against_mapping, find_metric_name, outline_signature
from dspy_service.errors import JobError
from dspy_service.registry import fit_to_splits, get_registry
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


def test_registry_resolves_aliases_and_dotted_paths():
    import dspy

    registry = get_registry()
    assert registry.module("cot").factory is dspy.ChainOfThought
    assert registry.module("dspy.Predict").factory is dspy.Predict
    assert registry.optimizer("dspy.teleprompt.MIPROv2").factory is dspy.MIPROv2
    with pytest.raises(JobError, match="unknown optimizer 'nope'"):
        registry.optimizer("nope")
    with pytest.raises(JobError, match="unknown module 'os.system'"):
        registry.module("os.system")


def test_optimizer_kwargs_checked_against_real_signatures():
    registry = get_registry()
    bootstrap = registry.optimizer("bootstrap")
    registry.check_optimizer_kwargs(bootstrap, {"max_bootstrapped_demos": 2}, {}, lm_roles=set())
    with pytest.raises(JobError, match="optimizer_kwargs.max_demos: .* does not accept"):
        registry.check_optimizer_kwargs(bootstrap, {"max_demos": 2}, {}, lm_roles=set())
    with pytest.raises(JobError, match="optimizer_kwargs.metric is set by the service"):
        registry.check_optimizer_kwargs(bootstrap, {"metric": "x"}, {}, lm_roles=set())
    with pytest.raises(JobError, match="compile_kwargs.trainset is set by the service"):
        registry.check_optimizer_kwargs(bootstrap, {}, {"trainset": []}, lm_roles=set())
    with pytest.raises(JobError, match="compile_kwargs.num_trials"):
        registry.check_optimizer_kwargs(bootstrap, {}, {"num_trials": 3}, lm_roles=set())
    # COPRO swallows **_kwargs silently; we still reject a typo.
    with pytest.raises(JobError, match="optimizer_kwargs.bredth"):
        registry.check_optimizer_kwargs(registry.optimizer("copro"), {"bredth": 2}, {}, lm_roles=set())
    with pytest.raises(JobError, match="needs a reflection model"):
        registry.check_optimizer_kwargs(registry.optimizer("gepa"), {"auto": "light"}, {}, lm_roles=set())


def test_batch_sizes_fit_small_splits():
    registry = get_registry()
    simba = registry.optimizer("simba")
    kwargs, _ = fit_to_splits(simba, {"train": 10, "val": 2, "test": 2}, {}, {})
    assert kwargs["bsize"] == 10
    with pytest.raises(JobError, match="bsize=32 exceeds the train split"):
        fit_to_splits(simba, {"train": 10, "val": 2, "test": 2}, {"bsize": 32}, {})
    mipro = registry.optimizer("miprov2")
    _, compile_kwargs = fit_to_splits(mipro, {"train": 20, "val": 5, "test": 5}, {"auto": None}, {})
    assert compile_kwargs["minibatch_size"] == 5
    with pytest.raises(JobError, match="minibatch_size=35 exceeds"):
        fit_to_splits(mipro, {"train": 20, "val": 5, "test": 5}, {"auto": None}, {"minibatch_size": 35})
