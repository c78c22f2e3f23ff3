"""The progress state of one job: its bars, the stage it is in, the overall percentage
and the time still needed; every event leaves as a `dspy_service.progress` log record.

A bar is a real tqdm bar (telemetry/tqdm_hook.py) or an optimizer phase read from log lines
(telemetry/optimizer_log.py); score events come from those lines and from GEPA's callbacks
(telemetry/gepa_progress.py). The stage is the Prefect task run a bar opens in
(`contract.Stage`); each stage owns a share of the percentage (`contract.STAGE_SPANS`).

Bar updates are throttled (at most one event per `interval` per top-level bar, and per
nesting depth for bars inside another bar; the newest state always gets out, and so does
the end of a top-level bar); score events (a MIPROv2 trial, a GEPA candidate) are never
dropped, nor are retry events (an LM call waiting to retry after an error). How it fails:
it does not raise into the optimizer; a bar id it does not know
(already closed) is ignored, and a value it cannot compute is None.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dspy_service.contract import PROGRESS_LOGGER, STAGE_SPANS, Stage, encode_progress

EMIT_INTERVAL = 1.0  # seconds between two events of one bar

progress_logger = logging.getLogger(PROGRESS_LOGGER)


def finite_float(value: Any) -> float | None:
    """`value` as a finite float; None for anything else (a missing or malformed score)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _round(value: float | None, digits: int = 3) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


def tqdm_metrics(n: float, total: float | None, elapsed: float, desc: str | None = None) -> dict[str, Any]:
    """The contract's tqdm fields for a bar at `n` of `total` after `elapsed` seconds.

    rate is items per second over the bar's whole life (n / elapsed);
    remaining = (total - n) / rate; percent = 100 n / total. Unknown values are None.
    """
    elapsed = max(0.0, float(elapsed))
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
                del self._bars[bar_id]
            payload = {**metrics, "bar": bar.id, "stage": bar.stage, **self.extras}
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

    def retry_event(self, metrics: dict[str, Any]) -> None:
        """An LM call waiting to retry (`lm_usage.UsageMeter.record_retry`), never throttled.
        Until the next bar update the latest metrics say so under `retrying`, so that a job
        whose calls keep failing does not show its last healthy bar as if nothing happened."""
        with self._lock:
            self._emit("retry", {**metrics, "stage": self.stage})
            self.latest_metrics = {**self.latest_metrics, "retrying": dict(metrics)}

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
        scored. predict-rows (a batch job): what its bar over the rows still needs. Other
        stages: nothing is estimated (None).
        """
        with self._lock:
            if self.stage not in (Stage.COMPILE, Stage.EVALUATE, Stage.PREDICT):
                return None
            primary = self._primary_bar()
            remaining = primary.metrics()["tqdm_remaining"] if primary is not None else None
            if remaining is None:
                return None
            if self.stage == Stage.PREDICT:
                return round(remaining, 1)
            if self.stage == Stage.COMPILE:
                return round(remaining + self._evaluation_seconds(2), 1)
            passes_left = 1 if self._eval_bars_seen <= 1 else 0
            return round(remaining + self._evaluation_seconds(passes_left, primary.total), 1)

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
        if event == "progress":  # the whole job's share done and time left, for live bars
            metrics = {**metrics, "job_percent": self.percent, "job_remaining": self.estimated_remaining()}
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
