"""Schemathesis fuzzes every endpoint of the served OpenAPI schema against the real API:
no 5xx, and every response matches the status codes, content types and bodies that the
schema documents. The work pool is paused meanwhile, so generated valid jobs never run.
Requests carry the stack's admin token, so every operation is reached past authentication
(401/403 are covered by tests/integration/test_identity.py)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES_PER_OPERATION = 100
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

@pytest.fixture(scope="module")
def api_schema(rstack):
    from prefect.client.schemas.actions import WorkPoolUpdate

    pool = rstack.stack.config.settings.work_pool
    before = {item["job_id"] for item in rstack.api.get("/jobs", params={"limit": 500}).json()["items"]}
    with rstack.prefect_client() as client:
        client.update_work_pool(pool, WorkPoolUpdate(is_paused=True))
    try:
        yield schemathesis.openapi.from_url(f"{rstack.stack.config.api_url}/openapi.json")
    finally:
        # Jobs the fuzzer created: cancel and delete them, then let the pool run again.
        for item in rstack.api.get("/jobs", params={"limit": 500}).json()["items"]:
            if item["job_id"] not in before:
                rstack.api.post(f"/jobs/{item['job_id']}/cancel")
                rstack.api.delete(f"/jobs/{item['job_id']}")
        with rstack.prefect_client() as client:
            client.update_work_pool(pool, WorkPoolUpdate(is_paused=False))


def test_api_conforms_to_its_schema(api_schema, rstack):
    auth = {"Authorization": rstack.api.headers["Authorization"]}
    calls: list[str] = []
    failures: dict[str, str] = {}
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
        )
        def check(case):
            calls.append(f"{case.method} {case.path}")
            case.call_and_validate(checks=CHECKS, timeout=60, headers=auth)

        try:
            check()
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure, then report
            failures[operation.label] = str(exc)[:2000]
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
    assert len(calls) >= 500, f"only {len(calls)} generated cases"
    assert len(set(calls)) >= 10, sorted(set(calls))
