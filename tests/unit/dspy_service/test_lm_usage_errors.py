"""Failed LM calls per role and cause, and the failure message they lead."""

from __future__ import annotations

from dspy_service.lm_usage import UsageMeter
from tasks.language_models import explain_failure


class BadRequestError(Exception):
    pass


def overflow(tokens: int) -> Exception:
    return BadRequestError(f"request ({tokens} tokens) exceeds the available context size (1024 tokens) key sk-live-9")


def meter_with_errors() -> UsageMeter:
    meter = UsageMeter(secrets=["sk-live-9"])
    meter.record("main", {"usage": {"prompt_tokens": 5, "completion_tokens": 1}})
    for tokens in range(1300, 1311):
        meter.record_error("main", overflow(tokens))
    meter.record_error("prompt", TimeoutError("read timed out"))
    return meter


def test_errors_are_counted_per_role_and_cause_with_secrets_scrubbed():
    usage = meter_with_errors().snapshot()
    main = usage["by_role"]["main"]
    assert (main["calls"], main["errors"]) == (1, 11)
    assert main["top_errors"] == [{
        "error": "BadRequestError: request (1300 tokens) exceeds the available context size (1024 tokens) key ***",
        "count": 11,
    }]
    assert usage["by_role"]["prompt"]["top_errors"] == [{"error": "TimeoutError: read timed out", "count": 1}]
    assert usage["total"]["errors"] == 12 and "top_errors" not in usage["total"]


def test_the_most_frequent_cause_leads_the_message():
    meter = meter_with_errors()
    assert meter.describe_errors() == (
        "11 of 12 main-model calls failed: BadRequestError: request (1300 tokens) exceeds the available context "
        "size (1024 tokens) key ***"
    )
    meter.record_error("main", ValueError("other"))
    assert meter.describe_errors().startswith("12 of 13 main-model calls failed, most often (11): BadRequestError")
    assert UsageMeter().describe_errors() is None


def test_a_wrapper_or_an_lm_error_is_led_by_the_lm_errors_behind_it():
    meter = meter_with_errors()
    wrapper = Exception("Execution cancelled due to errors or interruption.")
    message = explain_failure("compile-program failed: Exception: Execution cancelled due to errors", wrapper, meter)
    assert message.startswith("11 of 12 main-model calls failed: BadRequestError: request (1300 tokens)"), message
    assert message.endswith("; compile-program failed: Exception: Execution cancelled due to errors"), message
    try:
        try:
            raise overflow(2000)
        except BadRequestError as exc:
            raise RuntimeError("the optimizer gave up") from exc
    except RuntimeError as chained:
        assert explain_failure("compile-program failed: x", chained, meter).startswith("11 of 12 main-model")
    # The LM's own error, raised as it is, is told once.
    own = overflow(1300)
    told = explain_failure(f"evaluate-programs failed: BadRequestError: {own}", own, meter)
    assert told.endswith("key ***; evaluate-programs failed") and "sk-live-9" not in told, told


def test_an_unrelated_failure_keeps_its_own_message_first():
    meter = meter_with_errors()
    message = explain_failure("compile-program failed: KeyError: 'answer'", KeyError("answer"), meter)
    assert message.startswith("compile-program failed: KeyError: 'answer' (meanwhile 11 of 12 main-model calls")
    assert explain_failure("x failed: KeyError: 'a'", KeyError("a"), UsageMeter()) == "x failed: KeyError: 'a'"
    bare = explain_failure("x failed: Exception: Execution cancelled due to errors or interruption.",
                           Exception("Execution cancelled due to errors or interruption."), None)
    assert bare.endswith("(the errors behind it are in the job's logs)"), bare


def test_retries_are_counted_and_told_with_secrets_scrubbed():
    meter = UsageMeter(secrets=["sk-live-9"])
    told: list[dict] = []
    meter.on_retry(told.append)
    meter.on_retry(lambda event: 1 / 0)  # a failing listener changes nothing
    meter.record_retry("reflection", 2, 4.0, ConnectionError("refused with key sk-live-9"))
    assert told == [{"role": "reflection", "attempt": 2, "wait_seconds": 4.0,
                     "error": "ConnectionError: refused with key ***"}]
    usage = meter.snapshot()
    assert usage["by_role"]["reflection"]["retries"] == usage["total"]["retries"] == 1
