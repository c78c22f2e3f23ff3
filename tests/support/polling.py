"""The one polling helper: call a check until it holds or a timeout passes.

A wait that times out raises AssertionError naming what was awaited, so a test fails
with the reason instead of hanging; the timeout bounds the wait, it is not what a test
asserts (timings belong in bench/).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    check: Callable[[], T], timeout: float, interval: float = 0.2, what: str | Callable[[], str] = "the condition"
) -> T:
    """Call `check` every `interval` seconds until it returns something truthy, and return that.
    `what` (or what it returns, when called after the timeout) names the awaited condition."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g} s waiting for {described}")
        time.sleep(interval)
