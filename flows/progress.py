"""Live progress of a job: every optimizer's and Evaluate's progress as `progress_events`.

Sources, all captured in the job's process while `capture_progress()` is active:
- tqdm bars: DSPy's (Evaluate/ParallelExecutor, BootstrapFewShot) and GEPA's rollout
  budget bar. DSPy calls `tqdm.tqdm(...)` at run time and GEPA binds `tqdm` at import
  (`gepa.core.engine.tqdm`), so both the `tqdm` module attribute and every module-level
  binding are swapped for `ReportingTqdm` for the job's duration.
- GEPA's callback API (`gepa.optimize(callbacks=...)`): iterations, the validation score
  of every candidate, the best score so far.
- optimizer log lines: MIPROv2 trials and their scores (its logger), MIPROv2's
  "Bootstrapping set i/N" (a print), COPRO depth and SIMBA steps (their loggers).

Transport: an event is a log record of logger `dspy_service.progress` with message
`progress {"timestamp", "event", "metrics"}`; the job's log bridge ships it to the
Prefect API with the flow run's other logs and the API splits it out again. Bar updates
are throttled (at most one event per `interval` per top-level bar, and per nesting depth
for bars inside another bar; the newest state always gets out, and so does the end of a
top-level bar); score events (a MIPROv2 trial, a GEPA candidate) are never dropped.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import math
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import tqdm as tqdm_module

from dspy_service.contract import PROGRESS_LOGGER, STAGE_SPANS, Stage, encode_progress

EMIT_INTERVAL = 1.0  # seconds between two events of one bar

progress_logger = logging.getLogger(PROGRESS_LOGGER)
_original_tqdm = tqdm_module.tqdm


def _round(value: float | None, digits: int = 3) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


def tqdm_metrics(
    n: float, total: float | None, elapsed: float, desc: str | None = None, rate: float | None = None
) -> dict[str, Any]:
    """The contract's tqdm fields for a bar at `n` of `total` after `elapsed` seconds.

    rate is items per second over the bar's whole life (n / elapsed) unless given;
    remaining = (total - n) / rate; percent = 100 n / total. Unknown values are None.
    """
    elapsed = max(0.0, float(elapsed))
    if rate is None or rate <= 0:
        rate = n / elapsed if elapsed > 0 and n > 0 else None
    remaining = None
    if total is not None and total > 0 and rate:
        remaining = max(0.0, total - n) / rate
    return {
        "tqdm_total": total,
        "tqdm_n": n,
        "tqdm_elapsed": _round(elapsed),
        "tqdm_rate": _round(rate, 4),
        "tqdm_remaining": _round(remaining),
        "tqdm_percent": _round(100.0 * n / total, 1) if total else None,
        "tqdm_desc": desc or None,
    }


class Throttle:
    """At most one item per key per `interval` seconds; the newest item of a key is kept
    pending and comes out by `due()` (or at once with `final=True`), so nothing that
    describes the latest state is lost."""

    def __init__(self, interval: float = EMIT_INTERVAL, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.clock = clock
        self._last: dict[Any, float] = {}
        self._pending: dict[Any, Any] = {}

    def offer(self, key: Any, item: Any, final: bool = False) -> list[Any]:
        """Items to emit now (zero or one)."""
        now = self.clock()
        if final:
            self._pending.pop(key, None)
            self._last.pop(key, None)
            return [item]
        last = self._last.get(key)
        if last is None or now - last >= self.interval:
            self._pending.pop(key, None)
            self._last[key] = now
            return [item]
        self._pending[key] = item
        return []

    def due(self) -> list[Any]:
        """Pending items whose key has been quiet for `interval`."""
        now = self.clock()
        out = []
        for key in list(self._pending):
            if now - self._last.get(key, -math.inf) >= self.interval:
                out.append(self._pending.pop(key))
                self._last[key] = now
        return out

    def drain(self) -> list[Any]:
        out = list(self._pending.values())
        self._pending.clear()
        return out


@dataclass
class Bar:
    """One progress bar as the job sees it (a real tqdm bar or an optimizer phase)."""

    id: int
    desc: str | None
    total: float | None
    stage: str | None
    started: float
    synthetic: bool = False  # built from log lines, counts phases/trials, not examples
    depth: int = 0  # bars open around it when it opened (an Evaluate inside a GEPA step: 1)
    n: float = 0
    elapsed: float = 0.0
    closed: bool = False

    def metrics(self) -> dict[str, Any]:
        return tqdm_metrics(self.n, self.total, self.elapsed, self.desc)


def _current_stage() -> str | None:
    """The job stage (Prefect task-run name) the calling thread runs in, if it knows."""
    try:
        from prefect.context import TaskRunContext

        context = TaskRunContext.get()
    except Exception:  # noqa: BLE001
        return None
    if context is None or context.task_run is None:
        return None
    name = context.task_run.name
    return name if name in STAGE_SPANS else None


@dataclass
class JobProgress:
    """The progress state of one job; every method is thread-safe."""

    interval: float = EMIT_INTERVAL
    test_examples: int | None = None  # expected size of the test split (2 programs scored on it)
    clock: Callable[[], float] = time.monotonic
    emit: Callable[[dict[str, Any]], None] | None = None  # default: a progress log record
    event_count: int = 0
    latest_metrics: dict[str, Any] = field(default_factory=dict)
    stage: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # optimizer facts added to each event
    example_rate: float | None = None  # examples per second, last measured on a real bar
    percent: float = 0.0
    changed: bool = False

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._throttle = Throttle(self.interval, self.clock)
        self._ids = itertools.count(1)
        self._bars: dict[int, Bar] = {}
        self._eval_bars_seen = 0

    # --- bars -------------------------------------------------------------------------
    def open_bar(
        self, desc: str | None, total: float | None, *, synthetic: bool = False, stage: str | None = None
    ) -> int:
        with self._lock:
            stage = stage or _current_stage() or self.stage
            self._enter_stage(stage)
            if stage == Stage.EVALUATE and not synthetic:
                self._eval_bars_seen += 1
            depth = sum(1 for b in self._bars.values() if b.stage == stage)
            bar = Bar(next(self._ids), desc, total, stage, self.clock(), synthetic=synthetic, depth=depth)
            self._bars[bar.id] = bar
            return bar.id

    def update_bar(
        self,
        bar_id: int,
        n: float,
        *,
        total: float | None = None,
        desc: str | None = None,
        elapsed: float | None = None,
        final: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> None:
        with self._lock:
            bar = self._bars.get(bar_id)
            if bar is None:
                return
            bar.n = n
            bar.total = total if total is not None else bar.total
            bar.desc = desc if desc is not None else bar.desc
            bar.elapsed = elapsed if elapsed is not None else self.clock() - bar.started
            metrics = bar.metrics()
            if not bar.synthetic and metrics["tqdm_rate"] and bar.n >= 5:  # tiny bars: noise (cache hits)
                self.example_rate = metrics["tqdm_rate"]
            self._update_percent(bar)
            if final:
                bar.closed = True
                del self._bars[bar_id]
            payload = {**metrics, "bar": bar.id, "stage": bar.stage, **self.extras, **(extra or {})}
            if final:
                payload["final"] = True
            # A top-level bar is throttled on its own and its end always gets out. Nested
            # bars (GEPA scores each minibatch with a short Evaluate bar) share one budget
            # per depth, so a thousand short bars still make at most one event a second.
            key = bar.id if bar.depth == 0 else ("nested", bar.depth)
            for item in self._throttle.offer(key, payload, final=final and bar.depth == 0):
                self._emit("progress", item)

    def bar(self, bar_id: int | None) -> Bar | None:
        """The open bar with this id (None once it has closed)."""
        with self._lock:
            return self._bars.get(bar_id) if bar_id is not None else None

    # --- other events -----------------------------------------------------------------
    def score_event(self, event: str, metrics: dict[str, Any]) -> None:
        """A score on the optimizer's trajectory (never throttled)."""
        with self._lock:
            self._emit(event, {**metrics, "stage": self.stage})

    def set_extras(self, **values: Any) -> None:
        with self._lock:
            self.extras.update({k: v for k, v in values.items() if v is not None})

    def flush_due(self) -> None:
        with self._lock:
            for item in self._throttle.due():
                self._emit("progress", item)

    def finish(self) -> None:
        with self._lock:
            for bar_id in list(self._bars):
                self.update_bar(bar_id, self._bars[bar_id].n, final=True)
            for item in self._throttle.drain():
                self._emit("progress", item)

    # --- derived facts ----------------------------------------------------------------
    def estimated_remaining(self) -> float | None:
        """Seconds left, from the current bar and the stage (see README, Observability).

        compile-program: what the outermost open bar with a known total still needs at
        its own rate, plus the test evaluation still ahead (2 programs x test examples at
        the last measured examples/second). evaluate-programs: the open evaluation bar's
        remaining time, plus one more pass over the test split if the baseline is being
        scored. Other stages: nothing is estimated (None).
        """
        with self._lock:
            if self.stage == Stage.COMPILE:
                primary = self._primary_bar()
                if primary is None:
                    return None
                remaining = primary.metrics()["tqdm_remaining"]
                if remaining is None:
                    return None
                return round(remaining + self._evaluation_seconds(2), 1)
            if self.stage == Stage.EVALUATE:
                primary = self._primary_bar()
                if primary is None:
                    return None
                remaining = primary.metrics()["tqdm_remaining"]
                if remaining is None:
                    return None
                passes_left = 1 if self._eval_bars_seen <= 1 else 0
                return round(remaining + self._evaluation_seconds(passes_left, primary.total), 1)
            return None

    def _primary_bar(self) -> Bar | None:
        for bar in sorted(self._bars.values(), key=lambda b: b.id):
            if bar.stage == self.stage and bar.total:
                return bar
        return None

    def _evaluation_seconds(self, passes: int, examples: float | None = None) -> float:
        examples = examples or self.test_examples or 0
        if not passes or not examples or not self.example_rate:
            return 0.0
        return passes * examples / self.example_rate

    def _enter_stage(self, stage: str | None) -> None:
        if stage is None or stage == self.stage:
            return
        # A new stage ends the bars of the previous one: its optimizer phases (log-line
        # bars often see no end line; the stage did end, so they are complete) and any
        # tqdm bar an exception left open. What the throttle holds goes out first.
        for bar in [b for b in self._bars.values() if b.stage != stage]:
            done = bar.total if bar.synthetic and bar.total else bar.n
            self.update_bar(bar.id, done, final=True)
        for item in self._throttle.drain():
            self._emit("progress", item)
        self.extras.clear()  # optimizer facts belong to the compile stage
        self.stage = stage
        self._eval_bars_seen = 0
        start, _ = STAGE_SPANS.get(stage, (self.percent, self.percent))
        self.percent = max(self.percent, start)
        self.changed = True

    def _update_percent(self, bar: Bar) -> None:
        span = STAGE_SPANS.get(bar.stage or "")
        if span is None or not bar.total:
            return
        primary = self._primary_bar()
        if primary is not None and primary.id != bar.id:
            return
        fraction = min(1.0, bar.n / bar.total)
        start, end = span
        if bar.stage == Stage.EVALUATE:  # baseline, then optimized: two halves
            fraction = (min(self._eval_bars_seen, 2) - 1 + fraction) / 2
        self.percent = max(self.percent, round(start + (end - start) * fraction, 1))

    def _emit(self, event: str, metrics: dict[str, Any]) -> None:
        entry = {
            "timestamp": dt.datetime.now(dt.UTC).isoformat(),
            "event": event,
            "metrics": metrics,
        }
        self.event_count += 1
        if event == "progress":
            self.latest_metrics = metrics
        self.changed = True
        if self.emit is not None:
            self.emit(entry)
        else:
            progress_logger.info(encode_progress(entry))


# The job being observed in this process (one job per process; None between jobs).
_active: JobProgress | None = None


def active_progress() -> JobProgress | None:
    return _active


class ReportingTqdm(_original_tqdm):
    """A tqdm bar that also reports to the active job; a plain tqdm bar otherwise."""

    def __init__(self, *args: Any, **kwargs: Any):
        # Bars drawn on stdout would come back as print lines of the job; draw them on the
        # stream the job's stdout capture writes through to.
        file = kwargs.get("file")
        if file is None or getattr(file, "passthrough", None) is not None:
            kwargs["file"] = getattr(file, "passthrough", None) or sys.stderr
        super().__init__(*args, **kwargs)
        self._job_progress = _active if not self.disable else None
        self._job_bar: int | None = None
        if self._job_progress is not None:
            self._job_bar = self._job_progress.open_bar(self.desc, self.total)

    def _report(self, final: bool = False) -> None:
        progress, bar_id = getattr(self, "_job_progress", None), getattr(self, "_job_bar", None)
        if progress is None or bar_id is None:
            return
        if final:
            self._job_bar = None
        try:
            elapsed = self._time() - self.start_t
            progress.update_bar(bar_id, self.n, total=self.total, desc=self.desc, elapsed=elapsed, final=final)
        except Exception:  # noqa: BLE001  progress must never break the optimizer
            logging.getLogger(PROGRESS_LOGGER).debug("progress report failed", exc_info=True)

    def update(self, n: float | None = 1) -> bool | None:
        displayed = super().update(n)
        self._report()
        return displayed

    def close(self) -> None:
        self._report(final=True)
        super().close()


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
        score = _float(event.get("average_score"))
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


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


_NUMBER = r"(-?\d+(?:\.\d+)?(?:[eE]-?\d+)?)"
TRIAL_START = re.compile(r"== Trial (\d+) / (\d+)(.*?)=")
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


class OptimizerLogProgress(logging.Handler):
    """Turns optimizer log lines (and print lines) into phase bars and trial-score events."""

    # Loggers whose records it reads: optimizer loggers, and the loggers prints arrive on.
    SOURCES = ("dspy.teleprompt", "prefect.task_runs", "prefect.flow_runs", "dspy_service.print")

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
        if bar_id is None:
            return
        bar = self.progress.bar(bar_id)
        if bar is not None:
            self.progress.update_bar(bar_id, bar.n if n is None else n, final=True)

    def _read(self, message: str) -> None:
        if match := TRIAL_START.search(message):
            trial, total = int(match.group(1)), int(match.group(2))
            self._end_phase("MIPROv2 bootstrapping demo sets")
            self._trials_total = total
            kind = "minibatch" if "Minibatch" in match.group(3) else "full"
            self._trial = {"trial": trial, "kind": kind, "scored": False}
            self.progress.set_extras(optimizer="MIPROv2", trial=trial, trials_total=total)
            self._phase("MIPROv2 trials", trial - 1, total)
        elif match := DEFAULT_SCORE.search(message):
            self._trial_score(float(match.group(1)), full_eval=True)
        elif match := MINIBATCH_SCORE.search(message):
            self._trial_score(float(match.group(1)), full_eval=False)
        elif match := FULL_SCORE.search(message):
            self._trial_score(float(match.group(1)), full_eval=True)
        elif match := FULL_EVAL_SCORES.search(message):
            scores = [_float(s) for s in match.group(1).split(",") if s.strip()]
            if scores and self._trial and not self._trial.get("scored") and scores[-1] is not None:
                self._trial_score(scores[-1], full_eval=True)
        elif match := BEST_SCORE.search(message):
            self._best = _float(match.group(1))
            self.progress.set_extras(best_score=self._best)
        elif match := MIPRO_DONE.search(message):
            self._best = _float(match.group(1))
            self.progress.set_extras(best_score=self._best)
            self._end_phase("MIPROv2 trials")
        elif match := BOOTSTRAP_SET.search(message):
            self._phase("MIPROv2 bootstrapping demo sets", int(match.group(1)) - 1, int(match.group(2)))
        elif match := MIPRO_STEP.search(message):
            if match.group(1) != "1":
                bar = self.progress.bar(self._bars.get("MIPROv2 bootstrapping demo sets"))
                self._end_phase("MIPROv2 bootstrapping demo sets", int(bar.total) if bar and bar.total else None)
        elif match := COPRO_DEPTH.search(message):
            self.progress.set_extras(optimizer="COPRO")
            self._phase("COPRO depth", int(match.group(1)) - 1, int(match.group(2)))
        elif match := SIMBA_BATCH.search(message):
            self.progress.set_extras(optimizer="SIMBA")
            self._phase("SIMBA steps", int(match.group(1)) - 1, int(match.group(2)))

    def _trial_score(self, score: float, full_eval: bool) -> None:
        if not self._trial or self._trial.get("scored"):
            return
        self._trial["scored"] = True
        trial = self._trial["trial"]
        if full_eval and (self._best is None or score > self._best):
            self._best = score
        self.progress.set_extras(best_score=self._best)
        bar_id = self._bars.get("MIPROv2 trials")
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


def _tqdm_bindings() -> list[tuple[Any, str]]:
    """(module, name) pairs bound to the original tqdm class: `tqdm.tqdm` and every
    `from tqdm import tqdm` made before the job started (GEPA's engine, for one)."""
    out = []
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        # tqdm.std defines the class: its own references must stay the original.
        if not isinstance(namespace, dict) or namespace.get("__name__") == _original_tqdm.__module__:
            continue
        if namespace.get("tqdm") is _original_tqdm:
            out.append((module, "tqdm"))
    return out


def _wrap_gepa_optimize(progress: JobProgress) -> Callable[[], None]:
    """Add our GEPA callback to every `gepa.optimize` call (dspy.GEPA imports it at
    compile time); returns the undo function."""
    try:
        import gepa
    except ImportError:
        return lambda: None
    original = gepa.optimize

    def optimize_with_progress(*args: Any, **kwargs: Any) -> Any:
        callbacks = list(kwargs.get("callbacks") or [])
        callbacks.append(GEPAProgress(progress))
        kwargs["callbacks"] = callbacks
        return original(*args, **kwargs)

    optimize_with_progress.__wrapped__ = original  # type: ignore[attr-defined]
    gepa.optimize = optimize_with_progress

    def undo() -> None:
        if gepa.optimize is optimize_with_progress:
            gepa.optimize = original

    return undo


@contextmanager
def capture_progress(progress: JobProgress) -> Iterator[JobProgress]:
    """Report every bar, optimizer phase and score of the job to `progress` meanwhile.

    Process-global while active (tqdm and gepa.optimize are swapped, handlers are added
    to optimizer loggers): one job per process, as the worker runs them.
    """
    global _active
    _active = progress
    bindings = _tqdm_bindings()
    for module, name in bindings:
        setattr(module, name, ReportingTqdm)
    undo_gepa = _wrap_gepa_optimize(progress)
    reader = OptimizerLogProgress(progress)
    sources = [logging.getLogger(name) for name in OptimizerLogProgress.SOURCES]
    for source in sources:
        source.addHandler(reader)
    # dspy's optimizer INFO lines are progress even when the job keeps only warnings.
    teleprompt = logging.getLogger("dspy.teleprompt")
    previous_level = teleprompt.level
    if teleprompt.getEffectiveLevel() > logging.INFO:
        teleprompt.setLevel(logging.INFO)
    try:
        yield progress
    finally:
        _active = None
        progress.finish()
        teleprompt.setLevel(previous_level)
        for source in sources:
            source.removeHandler(reader)
        undo_gepa()
        # Restore the bindings we swapped and those made during the job (modules
        # imported while it ran bound ReportingTqdm).
        for module in list(sys.modules.values()):
            namespace = getattr(module, "__dict__", None)
            if isinstance(namespace, dict) and namespace.get("tqdm") is ReportingTqdm:
                module.tqdm = _original_tqdm
