"""Capture every progress source of a job into its `JobProgress` while the job runs.

`capture_progress()` composes the three sources: tqdm bars (telemetry/tqdm_hook.py),
GEPA's callbacks (telemetry/gepa_progress.py) and optimizer log lines
(telemetry/optimizer_log.py). Events leave as log records of the contract's progress
logger (telemetry/progress_model.py); the job's log routing (telemetry/job_logging.py)
ships them to the flow run and the API splits them out again as `progress_events`.

Process-global while active (tqdm and `gepa.optimize` are swapped, handlers are added to
loggers): one job per process, as the worker runs them. How it fails: on the way out,
whatever the job raised, open bars end with a final event and every swap is undone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from flows.telemetry.gepa_progress import gepa_callbacks
from flows.telemetry.optimizer_log import reading_optimizer_logs
from flows.telemetry.progress_model import JobProgress
from flows.telemetry.tqdm_hook import reporting_tqdm


@contextmanager
def capture_progress(progress: JobProgress) -> Iterator[JobProgress]:
    """Report every bar, optimizer phase and score of the job to `progress` meanwhile."""
    with ExitStack() as stack:
        stack.enter_context(reporting_tqdm(progress))
        stack.enter_context(gepa_callbacks(progress))
        stack.enter_context(reading_optimizer_logs(progress))
        stack.callback(progress.finish)  # first on the way out: the last state gets out
        yield progress
