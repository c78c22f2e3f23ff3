"""LM usage and estimated cost per role, against the local LM over HTTP (no Prefect)."""

from __future__ import annotations

import pytest

from dspy_service.errors import JobError
from dspy_service.schemas import ModelConfig
from tasks.language_models import UsageMeter, build_lm


def lm_for(local_lm, name: str, meter: UsageMeter, role: str = "main", **extra):
    config = ModelConfig(name=name, base_url=local_lm.url, extra={"api_key": "unit-key", **extra})
    return build_lm(config, role=role, meter=meter, cache=False)


def test_own_price_overrides_and_is_not_passed_to_the_lm(local_lm):
    meter = UsageMeter()
    lm = lm_for(local_lm, "openai/local-priced", meter, input_cost_per_token=1e-6, output_cost_per_token=3e-6)
    assert "input_cost_per_token" not in lm.kwargs and "output_cost_per_token" not in lm.kwargs
    lm("What is 2 + 3?")
    lm("What is 4 + 4?")
    usage = meter.snapshot()["by_role"]["main"]
    assert usage["calls"] == 2 and usage["cost_known"] is True
    expected = usage["prompt_tokens"] * 1e-6 + usage["completion_tokens"] * 3e-6
    assert usage["cost"] == pytest.approx(expected)


def test_dspy_price_metadata_for_a_known_model_and_unknown_cost_otherwise(local_lm):
    meter = UsageMeter()
    lm_for(local_lm, "openai/gpt-4o-mini", meter, role="task")("What is 1 + 1?")
    lm_for(local_lm, "openai/local-unpriced", meter, role="reflection")("What is 1 + 2?")
    snapshot = meter.snapshot()
    known, unknown = snapshot["by_role"]["task"], snapshot["by_role"]["reflection"]
    assert known["cost"] > 0 and known["cost_known"] is True
    assert unknown["cost"] == 0 and unknown["cost_known"] is False
    total = snapshot["total"]
    assert total["calls"] == 2 and total["cost"] == pytest.approx(known["cost"])
    assert total["cost_known"] is False, "a total with an unpriced call is not a known cost"


def test_half_a_price_is_a_clear_error(local_lm):
    with pytest.raises(JobError, match="reflection_model_config.extra: give both input_cost_per_token"):
        lm_for(local_lm, "openai/local-x", UsageMeter(), role="reflection", input_cost_per_token=1e-6)


def test_cache_hits_are_counted_apart_and_cost_nothing():
    meter = UsageMeter()
    meter.record("main", {"usage": {"prompt_tokens": 10, "completion_tokens": 2}, "cost": 0.5})
    meter.record("main", {"usage": {}, "cost": 0.5})  # DSPy keeps the old cost on a cache hit
    usage = meter.snapshot()["total"]
    assert (usage["calls"], usage["cache_hits"], usage["total_tokens"], usage["cost"]) == (1, 1, 12, 0.5)


def test_header_values_count_as_secrets_and_tell_tenants_apart(local_lm):
    from dspy_service.lm_cache import tenant_cache_scope
    from dspy_service.schemas import JobSpec
    from tasks.language_models import build_language_models
    from tests.support.payloads import job_payload

    def spec(bearer: str) -> JobSpec:
        payload = job_payload(local_lm.url)
        payload["model_config"]["extra"]["headers"] = {"Authorization": bearer}
        return JobSpec.model_validate(payload)

    assert tenant_cache_scope(spec("Bearer one")) != tenant_cache_scope(spec("Bearer two"))
    lms = build_language_models.fn(spec("Bearer sk-header-value"))
    assert "Bearer sk-header-value" in lms.secrets
