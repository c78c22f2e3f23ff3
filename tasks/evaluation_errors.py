"""The errors of one program's test evaluation: counted per cause, told in a user's words.

An example whose prediction or metric raises scores 0 and is counted here, so that an
evaluation with some bad examples (a context overflow, a refusal the adapter cannot
parse) still scores the program, and one where most examples fail says why. Causes are
told apart and scrubbed of secrets as dspy_service/error_causes.py says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dspy_service.error_causes import (  # noqa: F401 - re-exported
    MESSAGE_CHARS,
    TOP_CAUSES,
    Cause,
    CauseTally,
    cause_key,
    error_text,
)


@dataclass
class ErrorTally(CauseTally):
    """Errors of one evaluation, shared by every thread of it."""

    examples: int = 0

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
