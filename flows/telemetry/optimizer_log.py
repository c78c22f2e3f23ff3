"""Optimizer log lines as job progress: phases become bars, trial scores become events.

Read while `reading_optimizer_logs()` is active, from the optimizers' loggers and from the
loggers the job's prints arrive on:
- MIPROv2 (logger `dspy.teleprompt.mipro_optimizer_v2`): "== Trial i / N ... ==" opens or
  moves the "MIPROv2 trials" bar, and the trial's score line ("Default program score",
  "Score: x on minibatch ...", "Score: x with parameters ...", "Full eval scores so far")
  becomes a `trial` event; "Bootstrapping set i/N" (a print) is the demo-set phase, which
  "==> STEP 2" ends.
- COPRO: "Iteration Depth: i/N." is the "COPRO depth" bar.
- SIMBA: "Starting batch i of N." is the "SIMBA steps" bar.

How it fails: a line it does not recognise is ignored; an error while reading one goes to
logging's `handleError` (printed, never raised into the optimizer).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flows.telemetry.job_logging import PRINT_LOGGER
from flows.telemetry.progress_model import JobProgress, finite_float

_NUMBER = r"(-?\d+(?:\.\d+)?(?:[eE]-?\d+)?)"
TRIAL_START = re.compile(r"== Trial (\d+) / (\d+).*?=")
DEFAULT_SCORE = re.compile(r"Default program score: " + _NUMBER)
MINIBATCH_SCORE = re.compile(r"^Score: " + _NUMBER + r" on minibatch")
FULL_SCORE = re.compile(r"^Score: " + _NUMBER + r" with parameters")
FULL_EVAL_SCORES = re.compile(r"Full eval scores so far: \[([^\]]*)\]")
BEST_SCORE = re.compile(r"Best (?:full )?score so far: " + _NUMBER)
MIPRO_DONE = re.compile(r"Returning best identified program with score " + _NUMBER)
BOOTSTRAP_SET = re.compile(r"^Bootstrapping set (\d+)/(\d+)")
MIPRO_STEP = re.compile(r"==> STEP (\d)")
COPRO_DEPTH = re.compile(r"Iteration Depth: (\d+)/(\d+)")
SIMBA_BATCH = re.compile(r"Starting batch (\d+) of (\d+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")

TRIALS = "MIPROv2 trials"
DEMO_SETS = "MIPROv2 bootstrapping demo sets"
OPTIMIZER_LOGGER = "dspy.teleprompt"
# Loggers whose records are read: the optimizers' own, and those prints arrive on.
SOURCES = (OPTIMIZER_LOGGER, "prefect.task_runs", "prefect.flow_runs", PRINT_LOGGER)


class OptimizerLogProgress(logging.Handler):
    """Turns optimizer log lines (and print lines) into phase bars and trial-score events."""

    def __init__(self, progress: JobProgress):
        super().__init__(level=logging.INFO)
        self.progress = progress
        self._bars: dict[str, int] = {}
        self._trial: dict[str, Any] = {}
        self._trials_total: int | None = None
        self._best: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._read(ANSI.sub("", record.getMessage()).strip())
        except Exception:  # noqa: BLE001
            self.handleError(record)

    def _phase(self, name: str, n: int, total: int) -> None:
        bar_id = self._bars.get(name)
        if self.progress.bar(bar_id) is None:
            bar_id = self._bars[name] = self.progress.open_bar(name, total, synthetic=True)
        self.progress.update_bar(bar_id, n, total=total)

    def _end_phase(self, name: str, n: int | None = None) -> None:
        bar_id = self._bars.pop(name, None)
        bar = self.progress.bar(bar_id)
        if bar is not None:
            self.progress.update_bar(bar.id, bar.n if n is None else n, final=True)

    def _read(self, message: str) -> None:
        if match := TRIAL_START.search(message):
            self._trial_start(int(match.group(1)), int(match.group(2)))
        elif match := DEFAULT_SCORE.search(message):
            self._trial_score(float(match.group(1)), full_eval=True)
        elif match := MINIBATCH_SCORE.search(message):
            self._trial_score(float(match.group(1)), full_eval=False)
        elif match := FULL_SCORE.search(message):
            self._trial_score(float(match.group(1)), full_eval=True)
        elif match := FULL_EVAL_SCORES.search(message):
            scores = [finite_float(s) for s in match.group(1).split(",") if s.strip()]
            if scores and self._trial and not self._trial.get("scored") and scores[-1] is not None:
                self._trial_score(scores[-1], full_eval=True)
        elif match := BEST_SCORE.search(message):
            self._best = finite_float(match.group(1))
            self.progress.set_extras(best_score=self._best)
        elif match := MIPRO_DONE.search(message):
            self._best = finite_float(match.group(1))
            self.progress.set_extras(best_score=self._best)
            self._end_phase(TRIALS)
        elif match := BOOTSTRAP_SET.search(message):
            self._phase(DEMO_SETS, int(match.group(1)) - 1, int(match.group(2)))
        elif match := MIPRO_STEP.search(message):
            if match.group(1) != "1":  # the demo sets are done once step 2 starts
                bar = self.progress.bar(self._bars.get(DEMO_SETS))
                self._end_phase(DEMO_SETS, int(bar.total) if bar and bar.total else None)
        elif match := COPRO_DEPTH.search(message):
            self.progress.set_extras(optimizer="COPRO")
            self._phase("COPRO depth", int(match.group(1)) - 1, int(match.group(2)))
        elif match := SIMBA_BATCH.search(message):
            self.progress.set_extras(optimizer="SIMBA")
            self._phase("SIMBA steps", int(match.group(1)) - 1, int(match.group(2)))

    def _trial_start(self, trial: int, total: int) -> None:
        self._end_phase(DEMO_SETS)
        self._trials_total = total
        self._trial = {"trial": trial, "scored": False}
        self.progress.set_extras(optimizer="MIPROv2", trial=trial, trials_total=total)
        self._phase(TRIALS, trial - 1, total)

    def _trial_score(self, score: float, full_eval: bool) -> None:
        if not self._trial or self._trial.get("scored"):
            return
        self._trial["scored"] = True
        trial = self._trial["trial"]
        if full_eval and (self._best is None or score > self._best):
            self._best = score
        self.progress.set_extras(best_score=self._best)
        bar_id = self._bars.get(TRIALS)
        if bar_id is not None:
            self.progress.update_bar(bar_id, trial)
        bar = self.progress.bar(bar_id)
        self.progress.score_event(
            "trial",
            {
                "optimizer": "MIPROv2",
                "trial": trial,
                "trials_total": self._trials_total,
                "score": score,
                "full_eval": full_eval,
                "best_score": self._best,
                **(bar.metrics() if bar else {}),
            },
        )


@contextmanager
def reading_optimizer_logs(progress: JobProgress) -> Iterator[OptimizerLogProgress]:
    """Meanwhile, optimizer log lines and prints report to `progress`."""
    reader = OptimizerLogProgress(progress)
    sources = [logging.getLogger(name) for name in SOURCES]
    for source in sources:
        source.addHandler(reader)
    # dspy's optimizer INFO lines are progress even when the job keeps only warnings
    # (the job's log handlers gate by level, so opening the logger ships nothing more).
    optimizer_logger = logging.getLogger(OPTIMIZER_LOGGER)
    previous_level = optimizer_logger.level
    if optimizer_logger.getEffectiveLevel() > logging.INFO:
        optimizer_logger.setLevel(logging.INFO)
    try:
        yield reader
    finally:
        optimizer_logger.setLevel(previous_level)
        for source in sources:
            source.removeHandler(reader)
