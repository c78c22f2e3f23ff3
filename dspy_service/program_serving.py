"""The wire format between the API and the program server (deployments/program_server/):
shared models, no Prefect, no I/O.

The API resolves the version (owner-scoped, dspy_service/program_store.py), checks the
inputs against the document's input fields, and sends a `PredictCall`; the server answers
`PredictAnswer`, or an error `{"detail", "kind"}` with status 502 (`kind` "lm": the
provider's error, secrets scrubbed; "program": the program's own; "load": it cannot be
built; "credential": its credential is gone), 503 (its process exited under the request,
or it cannot start), 504 (too slow).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

PROGRAM_SERVER_TOKEN_HEADER = "Authorization"
PREDICT_PATH = "/v1/predict"
USAGE_PATH = "/v1/usage"
STATUS_PATH = "/v1/programs"


class PredictCall(BaseModel):
    owner: str
    name: str
    version: int = Field(ge=1)
    document_url: str
    document_sha256: str
    inputs: list[dict[str, Any]] = Field(min_length=1)


class PredictAnswer(BaseModel):
    outputs: list[dict[str, Any]]
    usage: dict[str, Any]  # this call's LM usage, summed over its inputs


def missing_input_fields(inputs: dict[str, Any], input_fields: list[str]) -> list[str]:
    """The signature's input fields that `inputs` lacks, in signature order."""
    return [name for name in input_fields if name not in inputs]
