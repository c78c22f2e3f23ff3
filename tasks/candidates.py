"""What an optimizer found before it failed: the best candidate so far, and the answers
its models gave that could not be parsed.

`CandidateTracker` is a DSPy callback, active during compile (`tracking_candidates`):
- every `dspy.Evaluate` of a whole validation set is a scored candidate (MIPROv2's full
  evaluations and GEPA's valset evaluations say so with `callback_metadata.metric_key ==
  "eval_full"`; optimizers that pass no metadata, such as random search or COPRO, score
  whole sets). Minibatch scores are not compared: they are too noisy to pick a program.
  The best-scoring candidate is kept as a copy; on a tie the first one stays.
- every adapter parse is counted per signature output fields, failed or not, so that a
  failure before any candidate can say "the prompt model answered without the
  `proposed_instruction` field 6 of 6 times".

How it fails: a callback error is logged by DSPy and never raised into the optimizer; a
candidate whose copy fails is skipped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dspy
from dspy.utils.callback import BaseCallback

logger = logging.getLogger(__name__)

MINIBATCH_KEYS = frozenset({"eval_minibatch"})


@dataclass
class Candidate:
    program: dspy.Module
    score: float
    evaluations: int  # whole-set evaluations seen when it was found


@dataclass
class ParseCounts:
    answers: int = 0
    failures: int = 0


def _scored_set(inputs: dict[str, Any]) -> bool:
    metadata = inputs.get("callback_metadata") or {}
    return metadata.get("metric_key") not in MINIBATCH_KEYS and not metadata.get("disable_logging")


def _fields(signature: Any) -> tuple[str, ...]:
    return tuple(getattr(signature, "output_fields", {}) or ())


class CandidateTracker(BaseCallback):
    """The best whole-set candidate of one compile and its models' parse outcomes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._programs: dict[str, Any] = {}
        self._parsing: dict[str, tuple[str, ...]] = {}
        self.best: Candidate | None = None
        self.evaluations = 0
        self.parses: dict[tuple[str, ...], ParseCounts] = {}

    # --- whole-set evaluations ----------------------------------------------------------
    def on_evaluate_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        if _scored_set(inputs) and isinstance(inputs.get("program"), dspy.Module):
            with self._lock:
                self._programs[call_id] = inputs["program"]

    def on_evaluate_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        with self._lock:
            program = self._programs.pop(call_id, None)
        score = getattr(outputs, "score", None)
        if program is None or exception is not None or not isinstance(score, (int, float)):
            return
        with self._lock:
            self.evaluations += 1
            if self.best is not None and score <= self.best.score:
                return
            try:
                copy = program.deepcopy()
            except Exception:  # noqa: BLE001 - an uncopyable candidate is not kept
                logger.debug("candidate not kept: it cannot be copied", exc_info=True)
                return
            self.best = Candidate(copy, float(score), self.evaluations)

    # --- adapter parses -----------------------------------------------------------------
    def on_adapter_parse_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        with self._lock:
            self._parsing[call_id] = _fields(inputs.get("signature"))

    def on_adapter_parse_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        with self._lock:
            fields = self._parsing.pop(call_id, ())
            counts = self.parses.setdefault(fields, ParseCounts())
            counts.answers += 1
            counts.failures += exception is not None

    def parse_counts(self, signature: Any) -> ParseCounts:
        with self._lock:
            return self.parses.get(_fields(signature), ParseCounts())


@contextmanager
def tracking_candidates() -> Iterator[CandidateTracker]:
    """Meanwhile (in this thread and the DSPy threads it starts), candidates are tracked."""
    tracker = CandidateTracker()
    with dspy.context(callbacks=[*(dspy.settings.get("callbacks") or []), tracker]):
        yield tracker
