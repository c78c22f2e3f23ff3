"""The registry: module/optimizer names, their real constructor signatures, split sizes."""

import pytest

from dspy_service.errors import JobError
from dspy_service.registry import fit_to_splits, get_registry


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
