"""POST /programs/{name}/predict's own checks, before anything is forwarded."""

from __future__ import annotations

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.routes.program_serving import PredictRequest, check_inputs


def test_a_missing_input_field_is_named_with_its_place_in_a_batch():
    with pytest.raises(RequestValidationError) as raised:
        check_inputs([{"question": "q"}, {"context": "c"}], ["question", "context"], single=False)
    errors = raised.value.errors()
    assert [e["loc"] for e in errors] == [("body", "inputs", 0, "context"), ("body", "inputs", 1, "question")]
    assert "missing input field 'context'" in errors[0]["msg"]
    check_inputs([{"question": "q", "extra": 1}], ["question"], single=True)  # extra inputs are passed on


def test_version_and_alias_exclude_each_other():
    with pytest.raises(ValidationError, match="not both"):
        PredictRequest(inputs={"q": 1}, version=1, alias="production")
    assert PredictRequest(inputs=[{"q": 1}]).alias is None
