"""LM errors a job meets: each retry counted and shown while it waits, and a job the LM
keeps refusing fails naming the refusal and how often (the flow in-process, real DSPy,
the local LM over HTTP with injected faults)."""

from __future__ import annotations

import logging

import pytest

from dspy_service.contract import PROGRESS_LOGGER, decode_progress
from dspy_service.settings import get_settings
from tests.support.flow_runner import run_flow
from tests.support.payloads import job_payload, tenant_model


class ProgressEvents(logging.Handler):
    """The job's progress events, as the API splits them out of its log records."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.events: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        event = decode_progress(record.name, record.getMessage())
        if event is not None:
            self.events.append(event)


@pytest.fixture
def progress_events():
    handler = ProgressEvents()
    logger = logging.getLogger(PROGRESS_LOGGER)
    logger.addHandler(handler)
    yield handler.events
    logger.removeHandler(handler)


@pytest.fixture
def patient_retries(monkeypatch):
    monkeypatch.setenv("DSPY_SERVICE_LM_NUM_RETRIES", "8")  # no call runs out of retries
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_every_retry_is_counted_and_shown_as_a_progress_event(local_lm, patient_retries, progress_events):
    local_lm.reset()
    local_lm.set_faults(6, status=503, retry_after=0)
    try:
        outcome = run_flow(job_payload(local_lm.url, rows=20, model_config=tenant_model(local_lm.url)))
    finally:
        local_lm.set_faults(0)
    assert outcome.state.is_completed(), outcome.message
    stats = local_lm.stats()
    usage = outcome.result["details"]["usage"]
    assert stats["failed_calls"] == 6
    # What the LM server saw beyond the calls it answered were retries, and nothing else.
    assert usage["by_role"]["main"]["retries"] == usage["total"]["retries"] == stats["failed_calls"], (usage, stats)
    assert usage["total"]["calls"] == stats["calls"] and usage["total"]["errors"] == 0, (usage, stats)
    retries = [event["metrics"] for event in progress_events if event["event"] == "retry"]
    assert len(retries) == 6, progress_events
    assert all(m["role"] == "main" and m["wait_seconds"] == 0 and m["attempt"] >= 1 for m in retries), retries
    assert all("Injected fault 503" in m["error"] and m["stage"] for m in retries), retries


def test_an_lm_that_refuses_every_call_fails_the_job_with_the_count_and_the_cause(local_lm):
    local_lm.reset()
    local_lm.set_faults(10_000, status=400)
    try:
        outcome = run_flow(job_payload(local_lm.url, rows=20, model_config=tenant_model(local_lm.url)))
        refused = local_lm.stats()["failed_calls"]
    finally:
        local_lm.set_faults(0)
    assert outcome.state.is_failed()
    message = outcome.message
    assert refused > 0
    assert message.startswith(
        f"{refused} of {refused} main-model calls failed: LMInvalidRequestError: [openai/local-arithmetic] "
        "Injected fault 400 from the local test LM"
    ), message
    assert message.endswith("; compile-program failed"), "the cause is said once, then where it stopped the job"
