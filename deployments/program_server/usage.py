"""Usage of served programs, summed per (owner, program) and per version, in the program
server's memory (from the per-call usage each child reports: dspy_service/lm_usage.py).

The sums start at zero when the program server starts and are those of this server only
(a second program server keeps its own). Nothing here fails.
"""

from __future__ import annotations

import threading
from typing import Any

COUNTED = ("calls", "cache_hits", "prompt_tokens", "completion_tokens", "total_tokens", "cost", "priced_calls")


def add_usage(total: dict[str, Any], usage: dict[str, Any]) -> None:
    for key in COUNTED:
        total[key] = total.get(key, 0) + (usage.get(key) or 0)
    total["cost"] = round(total["cost"], 8)
    total["cost_known"] = total["priced_calls"] == total["calls"]


def empty_usage() -> dict[str, Any]:
    total: dict[str, Any] = {}
    add_usage(total, {})
    return total


class UsageTotals:
    """Predictions, errors and LM usage per program and per version."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._programs: dict[tuple[str, str], dict[str, Any]] = {}

    def record(self, owner: str, name: str, version: int, usage: dict[str, Any], predictions: int, errors: int) -> None:
        with self._lock:
            program = self._programs.setdefault((owner, name), {"versions": {}})
            for entry in (program, program["versions"].setdefault(version, {})):
                entry["predictions"] = entry.get("predictions", 0) + predictions
                entry["errors"] = entry.get("errors", 0) + errors
                add_usage(entry.setdefault("usage", {}), usage)

    def of(self, owner: str, name: str) -> dict[str, Any]:
        """{"predictions", "errors", "usage", "versions": {v: the same}} (zeros when never served)."""
        with self._lock:
            program = self._programs.get((owner, name))
            if program is None:
                return {"predictions": 0, "errors": 0, "usage": empty_usage(), "versions": {}}
            return {
                "predictions": program["predictions"],
                "errors": program["errors"],
                "usage": dict(program["usage"]),
                "versions": {str(v): {**e, "usage": dict(e["usage"])} for v, e in sorted(program["versions"].items())},
            }
