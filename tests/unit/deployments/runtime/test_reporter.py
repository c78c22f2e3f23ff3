"""RunReporter's Secret block read: the supervisor hands a sandboxed engine exactly what
the Prefect API holds, and never starts a job as if a block were deleted because the
server was away."""

from __future__ import annotations

import json

import httpx
import pytest

from deployments.runtime.reporter import PrefectUnreachable, RunReporter

RUN_ID = "5b0c3b8e-0000-4000-8000-000000000001"


def reporter_answering(handler) -> RunReporter:
    reporter = RunReporter({"PREFECT_API_URL": "http://prefect.invalid/api"}, RUN_ID)
    reporter.client = httpx.Client(base_url="http://prefect.invalid/api", transport=httpx.MockTransport(handler))
    return reporter


def test_a_secret_block_is_read_with_its_secrets_and_decoded_like_secret_get():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(200, json={"data": {"value": json.dumps({"api_key": "sk-1"})}})

    assert reporter_answering(handler).read_secret_block("dspy-job-a/b") == {"api_key": "sk-1"}
    assert seen[0].raw_path.startswith(b"/api/block_types/slug/secret/block_documents/name/dspy-job-a%2Fb?")
    assert seen[0].params["include_secrets"] == "true"


def test_a_deleted_block_is_none_and_a_block_holding_no_mapping_too():
    assert reporter_answering(lambda r: httpx.Response(404, json={"detail": "nope"})).read_secret_block("x") is None
    plain = reporter_answering(lambda r: httpx.Response(200, json={"data": {"value": "plain"}}))
    assert plain.read_secret_block("x") is None


def test_a_restarting_server_is_waited_out(monkeypatch):
    monkeypatch.setattr("deployments.runtime.reporter.time.sleep", lambda s: None)
    found = httpx.Response(200, json={"data": {"value": {"k": 1}}})
    answers = iter([httpx.ConnectError("refused"), httpx.Response(503), found])

    def handler(request: httpx.Request) -> httpx.Response:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert reporter_answering(handler).read_secret_block("x") == {"k": 1}


def test_a_server_that_stays_away_is_an_error_not_a_deleted_block(monkeypatch):
    clock = iter(range(0, 10_000, 10))
    monkeypatch.setattr("deployments.runtime.reporter.time.monotonic", lambda: next(clock))
    monkeypatch.setattr("deployments.runtime.reporter.time.sleep", lambda s: None)

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with pytest.raises(PrefectUnreachable, match="could not be reached"):
        reporter_answering(handler).read_secret_block("x")


def test_the_job_timeout_comes_from_a_run_already_read_without_another_request():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json={"parameters": {"job": {"timeout_seconds": 30}}})

    reporter = reporter_answering(handler)
    assert reporter.read_job_timeout({"parameters": {"job": {"timeout_seconds": 12}}}) == 12.0
    assert seen == []
    assert reporter.read_job_timeout() == 30.0  # nothing read yet (sandbox off): one read
    assert seen == [f"/api/flow_runs/{RUN_ID}"]
