"""Route a job's DSPy, optimizer and service logs to its Prefect flow run.

Prefect only ships records to the API from its own run loggers, and only in threads that
carry a run context; DSPy logs from worker threads (Evaluate, ParallelExecutor) and the
`dspy` logger does not propagate. So each captured logger gets Prefect's API handler with
a filter stamping the job's flow-run id on every record, whatever thread made it. The
same records are kept in memory for `result.run_log`.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect.logging.handlers import APILogHandler

# Loggers whose records belong to the job. Prefect's run loggers reach the API already.
JOB_LOGGERS = ("dspy", "dspy_service", "tasks", "flows", "gepa", "optuna")
PREFECT_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
RUN_LOG_LIMIT = 5000


class _StampFlowRun(logging.Filter):
    def __init__(self, flow_run_id: str):
        super().__init__()
        self.flow_run_id = flow_run_id

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "flow_run_id", None):
            record.flow_run_id = self.flow_run_id
        return True


class RunLogCapture(logging.Handler):
    """Keeps the job's log records as contract log entries (oldest dropped past a limit)."""

    def __init__(self, limit: int = RUN_LOG_LIMIT):
        super().__init__()
        self.limit = limit
        self.entries: list[dict[str, Any]] = []
        self._entries_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = {
                "timestamp": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
                "level": record.levelname,
                "logger": record.name,
                "message": record.getMessage(),
            }
        except Exception:
            self.handleError(record)
            return
        with self._entries_lock:
            self.entries.append(entry)
            if len(self.entries) > self.limit:
                del self.entries[: len(self.entries) - self.limit]


@contextmanager
def job_logging(flow_run_id: str | None, level: str = "INFO") -> Iterator[RunLogCapture]:
    capture = RunLogCapture()
    api_handler: APILogHandler | None = None
    if flow_run_id:
        api_handler = APILogHandler()
        api_handler.addFilter(_StampFlowRun(flow_run_id))
    attached: list[tuple[logging.Logger, logging.Handler]] = []
    # Prefect's own API handlers (added by PREFECT_LOGGING_EXTRA_LOGGERS) drop records
    # from threads without a run context; ours replaces them for the job's duration.
    displaced: list[tuple[logging.Logger, logging.Handler]] = []
    levels: dict[logging.Logger, int] = {}
    for name in JOB_LOGGERS + PREFECT_RUN_LOGGERS:
        logger = logging.getLogger(name)
        # Explicit levels: an inherited PREFECT_LOGGING_LEVEL=WARNING would drop the job's story.
        levels[logger] = logger.level
        logger.setLevel(level)
        if name in JOB_LOGGERS:
            if api_handler is not None:
                for handler in [h for h in logger.handlers if isinstance(h, APILogHandler)]:
                    logger.removeHandler(handler)
                    displaced.append((logger, handler))
                logger.addHandler(api_handler)
                attached.append((logger, api_handler))
        logger.addHandler(capture)
        attached.append((logger, capture))
    try:
        yield capture
    finally:
        if api_handler is not None:
            # Send what is queued before the run turns terminal: a client that sees
            # `success` must also see the job's logs.
            api_handler.flush()
        for logger, handler in attached:
            logger.removeHandler(handler)
        for logger, handler in displaced:
            logger.addHandler(handler)
        for logger, previous in levels.items():
            logger.setLevel(previous)
