"""Retries of a job's LM calls: counted per role as the LM server sees them, told before
each wait, and cut short when the job is told to stop (real DSPy, the local LM over HTTP)."""

from __future__ import annotations

import threading
import time

from dspy_service.lm_usage import UsageMeter
from dspy_service.schemas import ModelConfig
from tasks import stopping
from tasks.language_models import build_lm
from tasks.lm_retries import install


def metered(local_lm, meter: UsageMeter, role: str = "main", retries: int = 3):
    config = ModelConfig(name="openai/local-retried", base_url=local_lm.url, extra={"api_key": "unit-key"})
    lm = build_lm(config, role=role, meter=meter, cache=False)
    lm.num_retries = lm.configured_retries = retries
    return lm


def test_the_installed_dspy_has_the_retry_hook():
    from dspy.clients import execution

    assert install() is True
    assert install() is True, "installing twice wraps once"
    assert hasattr(execution._delay, "__wrapped__") and not hasattr(execution._delay.__wrapped__, "__wrapped__")


def test_each_retry_is_counted_and_told_before_its_wait(local_lm):
    meter = UsageMeter()
    told: list[dict] = []
    meter.on_retry(told.append)
    lm = metered(local_lm, meter, role="prompt")
    local_lm.reset()
    local_lm.set_faults(3, status=503, retry_after=0)
    try:
        assert lm("What is 2 + 3?")
        local_lm.set_faults(2, status=429, retry_after=0)
        assert lm("What is 4 + 4?")
    finally:
        local_lm.set_faults(0)
    stats = local_lm.stats()
    usage = meter.snapshot()
    assert stats["failed_calls"] == 5 and stats["calls"] == 2
    # Every request the server saw beyond the successful ones was a retry.
    assert usage["by_role"]["prompt"]["retries"] == stats["failed_calls"] == usage["total"]["retries"]
    assert usage["by_role"]["prompt"]["errors"] == 0 and usage["by_role"]["prompt"]["top_errors"] == []
    assert [event["attempt"] for event in told] == [1, 2, 3, 1, 2]
    assert all(event["role"] == "prompt" and event["wait_seconds"] == 0 for event in told)
    assert "Injected fault 503" in told[0]["error"] and "Injected fault 429" in told[-1]["error"]


def test_a_call_that_runs_out_of_retries_is_one_error_with_its_cause(local_lm):
    meter = UsageMeter()
    lm = metered(local_lm, meter, retries=1)
    local_lm.reset()
    local_lm.set_faults(2, status=500, retry_after=0)
    try:
        lm("What is 1 + 1?")
    except Exception as exc:  # noqa: BLE001
        assert "Injected fault 500" in str(exc)
    else:
        raise AssertionError("the call succeeded although every attempt failed")
    finally:
        local_lm.set_faults(0)
    main = meter.snapshot()["by_role"]["main"]
    assert (main["retries"], main["errors"], local_lm.stats()["failed_calls"]) == (1, 1, 2)
    assert main["top_errors"][0]["count"] == 1 and "Injected fault 500" in main["top_errors"][0]["error"]


def test_a_job_told_to_stop_does_not_wait_out_a_retry(local_lm):
    meter = UsageMeter()
    lm = metered(local_lm, meter)
    local_lm.set_faults(1, status=503, retry_after=30, delay_ms=300)
    stopper = threading.Timer(0.1, stopping.request_stop)
    started = time.monotonic()
    stopper.start()
    try:
        lm("What is 3 + 3?")
    except stopping.JobStopped:
        pass
    else:
        raise AssertionError("the call went on after the stop")
    finally:
        stopper.cancel()
        stopping.reset()
        local_lm.set_faults(0)
    assert time.monotonic() - started < 10, "the 30 s Retry-After was waited out"
    total = meter.snapshot()["total"]
    assert total["errors"] == 0 and total["retries"] == 0, "the stop is not the LM's error"
