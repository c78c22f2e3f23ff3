"""The errors of one program's test evaluation: counted per cause, told in a user's words.

An example whose prediction or metric raises scores 0 and is counted here, so that an
evaluation with some bad examples (a context overflow, a refusal the adapter cannot
parse) still scores the program, and one where most examples fail says why. A cause is
the exception's class and its message with numbers blanked, so "request (1360 tokens)"
and "request (1412 tokens)" are one cause; the first message of each cause is kept, with
the job's secrets replaced by `***` (an LM error may echo a key).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any

MESSAGE_CHARS = 300
TOP_CAUSES = 3


def error_text(exc: BaseException) -> str:
    """The innermost useful message: LiteLLM wraps the provider's error in its own."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def cause_key(text: str) -> str:
    return re.sub(r"\d+", "#", text)[:MESSAGE_CHARS]


@dataclass
class Cause:
    error: str  # the first message seen, secrets scrubbed
    count: int = 0


@dataclass
class ErrorTally:
    """Errors of one evaluation, shared by every thread of it."""

    secrets: list[str] = field(default_factory=list)
    examples: int = 0
    _causes: dict[str, Cause] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, exc: BaseException) -> None:
        text = error_text(exc)
        for secret in self.secrets:
            if len(secret) >= 4:
                text = text.replace(secret, "***")
        key = cause_key(text)
        with self._lock:
            cause = self._causes.setdefault(key, Cause(error=text[:MESSAGE_CHARS]))
            cause.count += 1

    @property
    def count(self) -> int:
        with self._lock:
            return sum(cause.count for cause in self._causes.values())

    def top(self, limit: int = TOP_CAUSES) -> list[dict[str, Any]]:
        with self._lock:
            causes = sorted(self._causes.values(), key=lambda cause: -cause.count)
        return [{"error": cause.error, "count": cause.count} for cause in causes[:limit]]

    def as_details(self) -> dict[str, Any]:
        """`evaluation_errors.<program>` of a job's result and summary."""
        return {"errors": self.count, "examples": self.examples, "top_errors": self.top()}

    def share(self) -> float:
        return self.count / self.examples if self.examples else 0.0

    def describe(self, program: str) -> str:
        """"11 of 12 test examples of the optimized program failed; most often (11):
        ContextWindowExceededError: ..."""
        top = self.top(1)
        cause = f"; most often ({top[0]['count']}): {top[0]['error']}" if top else ""
        return f"{self.count} of {self.examples} test examples of the {program} program failed{cause}"


def counting(function: Any, tally: ErrorTally) -> Any:
    """`function` (a program or a metric) with each exception it raises recorded in `tally`."""

    def counted(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except Exception as exc:
            tally.record(exc)
            raise

    return counted
