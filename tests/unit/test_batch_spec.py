"""Batch prediction's pure parts: the request, the job parameter, the row checks and the
results' formats (dspy_service/batch_spec.py)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from dspy_service.batch_spec import (
    BatchRequest,
    BatchSpec,
    batch_summary,
    is_batch_job,
    missing_input_field,
    results_jsonl,
    run_spec,
    scrub_errors,
    strip_lms,
)
from dspy_service.egress_policy import job_hosts
from dspy_service.schemas import JobSpec, SecretRefs
from dspy_service.secrets import handed_blocks, resolve_model_secrets


def spec(**overrides) -> BatchSpec:
    data = {
        "username": "alice",
        "program": "adder",
        "version": 2,
        "input_fields": ["question"],
        "model_config": {"name": "openai/local", "base_url": "http://10.0.0.5:8000/v1", "credential": "prod"},
    }
    return BatchSpec.model_validate({**data, **overrides})


def test_request_needs_exactly_one_dataset_and_at_most_one_version():
    assert BatchRequest.model_validate({"dataset": [{"question": "q"}]}).version is None
    for body in (
        {},
        {"dataset": [{"a": 1}], "dataset_source": "/data/x.csv"},
        {"dataset": [{"a": 1}], "version": 1, "alias": "prod"},
    ):
        with pytest.raises(ValidationError):
            BatchRequest.model_validate(body)
    with pytest.raises(ValidationError, match="dataset"):
        BatchRequest.model_validate({"dataset": []})
    with pytest.raises(ValidationError):
        BatchRequest.model_validate({"dataset": [{"a": 1}], "secret_refs": {"inline_block": "x"}})


def test_missing_input_field_names_the_field_and_row():
    rows = [{"question": "a", "context": "c"}, {"question": "b"}]
    assert missing_input_field(rows, ["question"]) is None
    assert missing_input_field(rows, ["question", "context"]) == ("context", 1)
    assert missing_input_field([{"question": "a"}, "not a row"], ["question"]) == ("question", 1)
    assert missing_input_field([{"question": None}], ["question"]) == ("question", 0)


def test_run_spec_tells_the_kinds_apart():
    batch = spec()
    assert is_batch_job(batch.wire()) and not is_batch_job({"module_name": "predict"})
    assert isinstance(run_spec({"job": batch.wire()}), BatchSpec)
    job = {
        "module_name": "predict",
        "signature_code": "x",
        "metric_code": "y",
        "optimizer_name": "bootstrap",
        "column_mapping": {"inputs": {"question": "question"}},
        "model_config": {"name": "openai/x"},
    }
    assert isinstance(run_spec({"job": job}), JobSpec)


def test_batch_spec_resolves_its_credential_like_a_job():
    """The job runtime hands a batch job its credential block and reaches its LM's host."""
    batch = spec(secret_refs=SecretRefs(credential_blocks={"main": "dspy-cred-x-prod"}))
    read = {"dspy-cred-x-prod": {"api_key": "sk-secret", "headers": {}}}.get
    assert handed_blocks(batch, read) == {"dspy-cred-x-prod": {"api_key": "sk-secret", "headers": {}}}
    resolved = resolve_model_secrets(batch, read)
    assert resolved.main_model.extra["api_key"] == "sk-secret"
    assert "sk-secret" not in json.dumps(batch.wire())
    assert ("10.0.0.5", 8000) in job_hosts(batch).targets


def test_strip_lms_drops_only_saved_lms():
    state = {"predict": {"demos": [1], "lm": {"model": "openai/gpt"}}, "metadata": {"dspy": "3"}}
    assert strip_lms(state) == {"predict": {"demos": [1], "lm": None}, "metadata": {"dspy": "3"}}


def test_results_are_one_json_line_per_row_in_order():
    results = [{"row": 1, "error": "ValueError: x"}, {"row": 0, "outputs": {"answer": "4"}}]
    lines = results_jsonl(results).decode().splitlines()
    assert [json.loads(line) for line in lines] == [{"row": 0, "outputs": {"answer": "4"}}, results[0]]
    assert batch_summary(results, {"calls": 1}) == {"rows": 2, "succeeded": 1, "failed": 1, "usage": {"calls": 1}}


def test_row_errors_never_show_a_secret():
    results = [{"row": 0, "error": "AuthenticationError: bad key sk-secret-1"}, {"row": 1, "outputs": {"a": "sk"}}]
    assert scrub_errors(results, ["sk-secret-1", ""]) == [
        {"row": 0, "error": "AuthenticationError: bad key ***"},
        {"row": 1, "outputs": {"a": "sk"}},
    ]


def test_a_request_may_name_the_credential_to_call_the_model_with():
    from api.batch_submission import batch_spec
    from api.identity import Caller

    document = {"input_fields": ["question"], "model_config": {"name": "openai/x", "credential": "old"}}
    request = BatchRequest.model_validate({"dataset": [{"question": "q"}], "credential": "new"})
    built = batch_spec(Caller(username="alice"), "adder", 1, document, request, 4)
    assert built.main_model.credential == "new" and built.username == "alice" and built.input_fields == ["question"]
    kept = batch_spec(
        Caller(username="alice"), "adder", 1, document, request.model_copy(update={"credential": None}), 4
    )
    assert kept.main_model.credential == "old"
    with pytest.raises(ValidationError):
        BatchRequest.model_validate({"dataset": [{"question": "q"}], "credential": "Not A Name"})
