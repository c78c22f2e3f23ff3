"""Size and time limits are refused up front with the limit in the message."""

from __future__ import annotations

import json

import pytest

from dspy_service.testing.local_lm import make_arithmetic_dataset
from tests.support.payloads import job_payload
from tests.support.reliability import STACK_ENV

pytestmark = pytest.mark.integration

MAX_BYTES = int(float(STACK_ENV["DSPY_SERVICE_MAX_REQUEST_MB"]) * 1024 * 1024)


def total_jobs(rstack) -> int:
    return rstack.api.get("/jobs", params={"limit": 1}).json()["total"]


def test_request_body_over_the_limit_is_413(rstack, local_lm):
    before = total_jobs(rstack)
    payload = job_payload(local_lm.url, rows=20)
    payload["dataset"] = make_arithmetic_dataset(40_000, seed=1)  # well over 2 MB of JSON
    body = json.dumps(payload).encode()
    assert len(body) > MAX_BYTES
    response = rstack.api.post("/run", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert f"the limit is {MAX_BYTES} bytes" in response.json()["detail"]
    assert "DSPY_SERVICE_MAX_REQUEST_MB" in response.json()["detail"]

    # The same body sent chunked (no Content-Length) is cut off too, not read into memory.
    def chunks():
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    response = rstack.api.post("/run", content=chunks(), headers={"content-type": "application/json"})
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 413 and "DSPY_SERVICE_MAX_REQUEST_MB" in response.json()["detail"]
    assert total_jobs(rstack) == before


def test_too_many_rows_is_400_naming_the_limit(rstack, local_lm):
    payload = job_payload(local_lm.url, rows=20)
    payload["dataset"] = make_arithmetic_dataset(5001, seed=2)
    response = rstack.api.post("/run", json=payload)
    assert response.status_code == 400
    assert response.json()["detail"] == "dataset has 5001 rows; the limit is 5000 (DSPY_SERVICE_MAX_DATASET_ROWS)"


def test_timeout_over_the_service_limit_is_400(rstack, local_lm):
    response = rstack.api.post("/run", json=job_payload(local_lm.url, rows=20, timeout_seconds=7200))
    assert response.status_code == 400
    assert "timeout_seconds is 7200; this service allows at most 3600" in response.json()["detail"]
    assert rstack.api.post("/run", json=job_payload(local_lm.url, rows=20, timeout_seconds=0)).status_code == 422
