"""The LM endpoint check at job start and the job's circuit breaker."""

from __future__ import annotations

import httpx
import pytest

from dspy_service.testing.local_lm import start_local_lm
from tasks.lm_health import EndpointBreaker, LMUnreachable, check_endpoints, endpoint_problem, shown_endpoint
from tests.support.stack import free_port


def test_an_endpoint_that_answers_passes_and_a_closed_port_is_named():
    with start_local_lm() as lm:
        assert endpoint_problem(lm.url) is None
    closed = f"http://127.0.0.1:{free_port()}/v1"
    assert endpoint_problem(closed) == "connection refused"
    with pytest.raises(LMUnreachable) as failed:
        check_endpoints({"reflection_model_config.base_url": closed})
    assert failed.value.field == "reflection_model_config.base_url"
    assert str(failed.value).startswith(f"LM endpoint {closed} unreachable: connection refused")


def test_the_breaker_opens_after_consecutive_failures_and_a_success_closes_it():
    breaker = EndpointBreaker(threshold=3)
    refused = httpx.ConnectError("[Errno 111] Connection refused")
    breaker.failed("http://user:pw@lm.internal:8000/v1?key=k", refused)
    assert breaker.suspect and not breaker.open
    breaker.succeeded()
    assert not breaker.suspect
    for _ in range(3):
        breaker.failed("http://user:pw@lm.internal:8000/v1?key=k", refused)
    with pytest.raises(LMUnreachable) as failed:
        breaker.check()
    assert str(failed.value) == "LM endpoint http://lm.internal:8000/v1 unreachable: connection refused (3 calls)"


def test_calls_in_flight_when_the_breaker_opens_do_not_change_its_message():
    # Threads whose calls were already sent fail after the one that opened the breaker; the
    # job's message must still name the calls that opened it (a real stack saw "9 calls").
    breaker = EndpointBreaker(threshold=3)
    refused = httpx.ConnectError("[Errno 111] Connection refused")
    for _ in range(3):
        breaker.failed("http://lm.internal:8000/v1", refused)
    breaker.failed("http://lm.internal:8000/v1", httpx.ConnectTimeout("timed out"))
    with pytest.raises(LMUnreachable) as failed:
        breaker.check()
    assert str(failed.value) == "LM endpoint http://lm.internal:8000/v1 unreachable: connection refused (3 calls)"


def test_shown_endpoints_carry_no_credentials():
    assert shown_endpoint("https://k:secret@api.example.com/v1?api_key=s") == "https://api.example.com/v1"
