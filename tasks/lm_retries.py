"""Every retry of a job's LM call: counted, and told while the call waits.

DSPy owns the retries of an LM call (dspy/clients/execution.py: LiteLLM and the native
engine each make one attempt); before each retry it asks `_delay(exc, attempt)` how long to
wait (the provider's Retry-After, else 1, 2, 4 … 60 s) and then sleeps, in the thread or
task of the call. That function is the one place every retry passes through, so
`install()` wraps it: the LM whose call is running (`retries_reported_to`, set by MeteredLM
around each call) hears of each retry, with its number and wait, before the wait. What it
raises ends the call instead of the wait (a job told to stop does not sit out a backoff).

How it fails: if DSPy no longer has that function, `install()` logs a warning and returns
False; calls are then retried as before, uncounted (tests/unit/tasks/test_lm_retries.py
checks the installed DSPy has it).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger("dspy_service.lm_retries")

# (attempt: 1 for the first retry, wait in seconds, the error being retried) -> None
RetryReporter = Callable[[int, float, BaseException], None]

_reporter: contextvars.ContextVar[RetryReporter | None] = contextvars.ContextVar("lm_retry_reporter", default=None)


def _wrap(delay: Callable[..., float]) -> Callable[..., float]:
    def reported_delay(exc: BaseException, attempt: int, *args: Any, **kwargs: Any) -> float:
        wait = delay(exc, attempt, *args, **kwargs)
        reporter = _reporter.get()
        if reporter is not None:
            reporter(attempt + 1, wait, exc)
        return wait

    reported_delay.__wrapped__ = delay  # type: ignore[attr-defined]
    return reported_delay


def install() -> bool:
    """Wrap DSPy's retry delay once per process; False if this DSPy has none."""
    try:
        from dspy.clients import execution
    except ImportError:
        execution = None
    delay = getattr(execution, "_delay", None)
    if not callable(delay):
        logger.warning("this DSPy has no dspy.clients.execution._delay: LM retries are not counted")
        return False
    if not hasattr(delay, "__wrapped__"):
        execution._delay = _wrap(delay)
    return True


@contextmanager
def retries_reported_to(reporter: RetryReporter) -> Iterator[None]:
    """Meanwhile, retries of LM calls made in this thread (or task) go to `reporter`."""
    token = _reporter.set(reporter)
    try:
        yield
    finally:
        _reporter.reset(token)
