"""Errors counted per cause and told in a user's words, shared by the test evaluation's
error tally (tasks/evaluation_errors.py) and the LM usage meter (dspy_service/lm_usage.py).

A cause is the exception's class and its message with numbers blanked, so "request (1360
tokens)" and "request (1412 tokens)" are one cause; the first message of each cause is
kept, with the job's secrets replaced by `***` (an LM error may echo a key). Nothing here
does I/O.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MESSAGE_CHARS = 300
TOP_CAUSES = 3
SHORTEST_SECRET = 4  # shorter values would blank ordinary words


def error_text(exc: BaseException) -> str:
    """The exception's class and message on one line: LiteLLM and DSPy carry the
    provider's own words in the message."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if len(secret) >= SHORTEST_SECRET:
            text = text.replace(secret, "***")
    return text


def cause_key(text: str) -> str:
    return re.sub(r"\d+", "#", text)[:MESSAGE_CHARS]


@dataclass
class Cause:
    error: str  # the first message seen, secrets scrubbed
    count: int = 0


@dataclass
class CauseTally:
    """Errors counted per cause, shared by threads."""

    secrets: list[str] = field(default_factory=list)
    _causes: dict[str, Cause] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def describe_error(self, exc: BaseException) -> str:
        """The error as it is shown: one line, secrets scrubbed, at most MESSAGE_CHARS."""
        return scrub(error_text(exc), self.secrets)[:MESSAGE_CHARS]

    def record(self, exc: BaseException) -> None:
        text = scrub(error_text(exc), self.secrets)
        with self._lock:
            cause = self._causes.setdefault(cause_key(text), Cause(error=text[:MESSAGE_CHARS]))
            cause.count += 1

    def knows(self, exc: BaseException) -> bool:
        """Whether an error of this cause was recorded."""
        with self._lock:
            return cause_key(scrub(error_text(exc), self.secrets)) in self._causes

    @property
    def count(self) -> int:
        with self._lock:
            return sum(cause.count for cause in self._causes.values())

    def top(self, limit: int = TOP_CAUSES) -> list[dict[str, Any]]:
        """The most frequent causes, most frequent first: [{"error", "count"}]."""
        with self._lock:
            causes = sorted(self._causes.values(), key=lambda cause: -cause.count)
        return [{"error": cause.error, "count": cause.count} for cause in causes[:limit]]
