"""A job whose LM is gone fails fast and says so (the flow in-process, real DSPy, a local
LM over HTTP that is closed before or during the job)."""

from __future__ import annotations

import threading
import time

import pytest

from dspy_service.settings import get_settings
from dspy_service.testing.local_lm import start_local_lm
from tests.support.flow_runner import run_flow
from tests.support.payloads import job_payload, tenant_model
from tests.support.stack import free_port


@pytest.fixture
def quick_breaker(monkeypatch):
    monkeypatch.setenv("DSPY_SERVICE_LM_NUM_RETRIES", "2")
    monkeypatch.setenv("DSPY_SERVICE_LM_UNREACHABLE_CALLS", "4")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_an_lm_that_is_not_there_at_start_fails_the_job_at_once(quick_breaker):
    url = f"http://127.0.0.1:{free_port()}/v1"
    started = time.monotonic()
    outcome = run_flow(job_payload(url, rows=20))
    assert outcome.state.is_failed()
    assert outcome.message == (
        f"LM endpoint {url} unreachable: connection refused (checked at job start; model_config.base_url)"
    ), outcome.message
    assert time.monotonic() - started < 30


def test_an_lm_that_goes_away_mid_job_trips_the_breaker_without_waiting_out_retries(quick_breaker):
    lm = start_local_lm(delay_ms=20)
    closed_at: list[float] = []

    def close_after_some_calls():
        while lm.stats()["calls"] < 10:
            time.sleep(0.02)
        lm.close()
        closed_at.append(time.monotonic())

    closer = threading.Thread(target=close_after_some_calls, daemon=True)
    closer.start()
    outcome = run_flow(job_payload(lm.url, rows=40, model_config=tenant_model(lm.url)))
    closer.join(timeout=5)
    assert closed_at, "the LM was never closed: the job made fewer than 10 calls"
    assert outcome.state.is_failed()
    assert f"LM endpoint {lm.url} unreachable: connection refused (4 calls)" in outcome.message, outcome.message
    assert "Execution cancelled" not in outcome.message
    # One call waits out its 2 retries (1 s + 2 s) per thread; the rest fail at once.
    assert time.monotonic() - closed_at[0] < 30
