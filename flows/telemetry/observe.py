"""Watch a running job: progress capture, live flow-run labels and the progress artifact.

`observe_job()` wraps the job's stages. While it is active, progress events are logged
(telemetry/capture.py) and a reporter thread, every `LABEL_INTERVAL` seconds and only when
something changed, PATCHes the run's labels (`latest_metrics`, `estimated_remaining`,
`progress_count`, `stage`, `usage`) and moves the progress artifact. Both are
best-effort: a lost label update or artifact move never fails a job (it is logged).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dspy_service import contract
from dspy_service.prefect_http import sync_prefect_client
from dspy_service.schemas import JobSpec
from flows.telemetry.artifacts import create_progress_artifact, update_progress_artifact
from flows.telemetry.capture import capture_progress
from flows.telemetry.labels import publish_labels
from flows.telemetry.progress_model import JobProgress

logger = logging.getLogger("dspy_service.observe")
LABEL_INTERVAL = 2.0  # seconds between two label PATCHes of a running job
TICK = 0.25  # how often pending (throttled) progress events are checked


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(seconds)
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class JobObserver:
    """One job's progress and the reporter thread that publishes it as labels and artifact."""

    def __init__(self, flow_run_id: str | None, job: JobSpec, label_interval: float = LABEL_INTERVAL):
        self.flow_run_id = flow_run_id
        self.job = job
        self.label_interval = label_interval
        self.progress = JobProgress()  # test_examples arrive with the splits (watch_splits)
        self.meter: Any = None
        self.artifact_id = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._finished = False  # succeeded: the last report says so
        self._thread: threading.Thread | None = None
        self._published: dict[str, Any] = {}
        self._last_percent: float | None = None

    # --- what the flow tells us -------------------------------------------------------
    def watch_usage(self, meter: Any) -> None:
        self.meter = meter
        meter.on_retry(self.progress.retry_event)

    def usage_total(self) -> dict[str, Any] | None:
        return self.meter.snapshot()["total"] if self.meter is not None else None

    # --- reporting ----------------------------------------------------------------------
    def labels(self) -> dict[str, Any]:
        progress = self.progress
        values: dict[str, Any] = {
            contract.PROGRESS_COUNT: progress.event_count,
            contract.STAGE: progress.stage,
            contract.USAGE: self.usage_total(),
        }
        if progress.latest_metrics:
            values[contract.LATEST_METRICS] = progress.latest_metrics
        # A moment without an estimate (between two bars, a stage with none) says so: a stale
        # estimate would look like a job that stalled at it.
        remaining = progress.estimated_remaining()
        values[contract.ESTIMATED_REMAINING] = contract.UNKNOWN_REMAINING if remaining is None else remaining
        return values

    def describe(self) -> str:
        progress = self.progress
        if self._finished:
            return f"{self.job.optimizer_name}: finished ({progress.event_count} progress events)"
        metrics = progress.latest_metrics
        bar = ""
        if metrics.get("tqdm_desc") or metrics.get("tqdm_total"):
            bar = f", {metrics.get('tqdm_desc') or 'progress'} {metrics.get('tqdm_n')}/{metrics.get('tqdm_total')}"
        best = f", best score {progress.extras['best_score']}" if "best_score" in progress.extras else ""
        retrying = metrics.get("retrying")
        if retrying:
            retrying = (
                f"; a {retrying.get('role')}-model call is waiting {retrying.get('wait_seconds')} s to retry "
                f"(retry {retrying.get('attempt')}) after {retrying.get('error')}"
            )
        return (
            f"{self.job.optimizer_name}: {progress.stage or 'starting'}{bar}{best}{retrying or ''}; "
            f"about {_clock(progress.estimated_remaining())} left"
        )

    def report(self, client: Any, final: bool = False) -> None:
        values = self.labels()
        if final:  # past its optimization (saving, the champion gate, failing): no estimate
            values[contract.ESTIMATED_REMAINING] = contract.UNKNOWN_REMAINING
        changed = {k: v for k, v in values.items() if v is not None and self._published.get(k) != v}
        if changed:
            publish_labels(self.flow_run_id, changed, client=client)
            self._published.update(changed)
        percent = self.progress.percent
        if self.artifact_id is not None and client is not None and (final or percent != self._last_percent):
            try:
                update_progress_artifact(client, self.artifact_id, percent, self.describe())
                self._last_percent = percent
            except Exception as exc:  # noqa: BLE001
                logger.debug("progress artifact update failed: %s", exc)

    def _run(self) -> None:
        client_cm = None
        client = None
        if self.flow_run_id:
            try:
                client_cm = sync_prefect_client()
                client = client_cm.__enter__()
            except Exception as exc:  # noqa: BLE001
                logger.warning("progress reporter has no Prefect client: %s", exc)
        waited = 0.0
        try:
            while not self._stop.wait(TICK):
                self.progress.flush_due()
                waited += TICK
                if waited >= self.label_interval and self.progress.changed:
                    waited = 0.0
                    self.progress.changed = False
                    self.report(client)
            self._done.wait(10)
            if client is not None:
                self.report(client, final=True)
        except Exception as exc:  # noqa: BLE001
            logger.warning("progress reporting failed: %s", exc)
        finally:
            if client_cm is not None:
                client_cm.__exit__(None, None, None)

    def start(self) -> None:
        if self.flow_run_id:
            self.artifact_id = create_progress_artifact(self.flow_run_id, f"{self.job.optimizer_name}: starting")
        self._thread = threading.Thread(target=self._run, name="dspy-service-progress", daemon=True)
        self._thread.start()

    def stop(self, succeeded: bool) -> None:
        """Stop reporting; the last report (final labels, 100 % on success) goes out first."""
        self._stop.set()
        if succeeded:
            self.progress.percent = 100.0
            self._finished = True
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=15)


# The job being observed in this process (one job per process; None between jobs).
_current: JobObserver | None = None


def watch_usage(meter: Any) -> None:
    """Let the running job's observer publish usage as it grows (no-op outside a job)."""
    if _current is not None:
        _current.watch_usage(meter)


def watch_splits(counts: dict[str, int]) -> None:
    """Tell the running job's observer how big the test split is (for estimated_remaining)."""
    if _current is not None:
        _current.progress.test_examples = max(1, counts["test"])


@contextmanager
def observe_job(flow_run_id: str | None, job: JobSpec) -> Iterator[JobObserver]:
    """Meanwhile, the job's progress is captured and published; 100 % if the body succeeds."""
    global _current
    observer = JobObserver(flow_run_id, job)
    _current = observer
    observer.start()
    succeeded = False
    try:
        with capture_progress(observer.progress):
            yield observer
        succeeded = True
    finally:
        _current = None
        observer.stop(succeeded)
