"""GEPA's optimization as job progress, through GEPA's callback API.

While `gepa_callbacks()` is active every `gepa.optimize` call (dspy.GEPA imports it at
compile time) gets one more callback, `GEPAProgress`: it adds the iteration, the metric
budget and the best score so far to every progress event, and reports each scored
candidate as a `candidate` event. GEPA's rollout-budget bar is a tqdm bar
(telemetry/tqdm_hook.py).

How it fails: without GEPA installed nothing is wrapped; a missing or non-numeric score
in a callback event is reported as None.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flows.telemetry.progress_model import JobProgress, finite_float


class GEPAProgress:
    """GEPA callbacks -> optimizer facts on every event and one event per scored candidate."""

    def __init__(self, progress: JobProgress):
        self.progress = progress
        self.best_score: float | None = None
        self.candidates = 0

    def on_optimization_start(self, event: dict[str, Any]) -> None:
        self.progress.set_extras(
            optimizer="GEPA", trainset_size=event.get("trainset_size"), valset_size=event.get("valset_size")
        )

    def on_iteration_start(self, event: dict[str, Any]) -> None:
        self.progress.set_extras(iteration=event.get("iteration"))

    def on_budget_updated(self, event: dict[str, Any]) -> None:
        self.progress.set_extras(
            metric_calls_used=event.get("metric_calls_used"), metric_calls_remaining=event.get("metric_calls_remaining")
        )

    def on_valset_evaluated(self, event: dict[str, Any]) -> None:
        score = finite_float(event.get("average_score"))
        if score is not None and (self.best_score is None or score > self.best_score):
            self.best_score = score
        self.candidates += 1
        self.progress.set_extras(best_score=self.best_score, candidates=self.candidates)
        self.progress.score_event(
            "candidate",
            {
                "optimizer": "GEPA",
                "iteration": event.get("iteration"),
                "candidate": event.get("candidate_idx"),
                "score": score,
                "best_score": self.best_score,
                "is_best": bool(event.get("is_best_program")),
                "parents": [p for p in event.get("parent_ids") or [] if p is not None],
                "examples_evaluated": event.get("num_examples_evaluated"),
                "valset_size": event.get("total_valset_size"),
            },
        )


@contextmanager
def gepa_callbacks(progress: JobProgress) -> Iterator[None]:
    """Meanwhile, every `gepa.optimize` call also reports to `progress`."""
    try:
        import gepa
    except ImportError:
        yield
        return
    original = gepa.optimize

    def optimize_with_progress(*args: Any, **kwargs: Any) -> Any:
        callbacks = list(kwargs.get("callbacks") or [])
        callbacks.append(GEPAProgress(progress))
        kwargs["callbacks"] = callbacks
        return original(*args, **kwargs)

    optimize_with_progress.__wrapped__ = original  # type: ignore[attr-defined]
    gepa.optimize = optimize_with_progress
    try:
        yield
    finally:
        if gepa.optimize is optimize_with_progress:
            gepa.optimize = original
