"""Route a job's DSPy, optimizer and service logs to its Prefect flow run.

Prefect only ships records to the API from its own run loggers, and only in threads that
carry a run context; DSPy logs from worker threads (Evaluate, ParallelExecutor) and the
`dspy` logger does not propagate. So each captured logger gets Prefect's API handler with
a filter stamping the job's flow-run id on every record, whatever thread made it. The
same records are kept in memory for `result.run_log`.

Also routed to the run: `warnings` (logger `py.warnings`), and `print` output that
Prefect's `log_prints` cannot attribute: it logs prints made in a thread with a run
context, but DSPy runs the user's metric in worker threads without one, where a print
falls through to `sys.stdout`. For the job's duration `sys.stdout` is a line splitter
that logs such lines as `dspy_service.print` (and still writes them through), within
the job's print budget (telemetry/print_budget.py).

How it fails: a console that cannot take a line loses it there only (the log keeps it);
a record that cannot be formatted goes to logging's `handleError`; `run_log` keeps the
newest `RUN_LOG_LIMIT` entries. Everything is restored on the way out, whatever the job
raised.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prefect.logging.handlers import APILogHandler

from dspy_service.contract import PROGRESS_LOGGER
from flows.telemetry.print_budget import PrintBudget

# Loggers whose records belong to the job. Prefect's run loggers reach the API already.
JOB_LOGGERS = ("dspy", "dspy_service", "tasks", "flows", "gepa", "optuna", "py.warnings")
PREFECT_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
PRINT_LOGGER = "dspy_service.print"
# Progress events travel as log records (telemetry/progress_model.py): shipped at any log level,
# kept out of `run_log` (the API lists them as progress_events, not logs).
RUN_LOG_LIMIT = 5000
MAX_PRINT_LINE = 10_000  # characters of one print line kept before it is logged anyway


class _StampFlowRun(logging.Filter):
    def __init__(self, flow_run_id: str):
        super().__init__()
        self.flow_run_id = flow_run_id

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "flow_run_id", None):
            record.flow_run_id = self.flow_run_id
        return True


class _LevelGate(logging.Filter):
    """The configured level for log entries; progress events always pass."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or record.name == PROGRESS_LOGGER


class PrintLines:
    """`sys.stdout` during a job: whole lines become `dspy_service.print` log records.

    Per-thread line buffers keep concurrent prints apart; whole lines are also written
    through to the real stdout. Lines written while this thread is already logging one (a
    handler printing to stdout) only pass through, so nothing loops.
    """

    def __init__(self, passthrough: Any, budget: PrintBudget, level: int = logging.INFO):
        self.passthrough = passthrough
        self.budget = budget
        self.level = level
        self.logger = logging.getLogger(PRINT_LOGGER)
        self._local = threading.local()

    def write(self, text: str) -> int:
        if getattr(self._local, "busy", False):
            self._write_through(text)
            return len(text)
        buffer = getattr(self._local, "buffer", "") + text
        *lines, rest = buffer.split("\n")
        if len(rest) > MAX_PRINT_LINE:  # text that never ends a line (a foreign \r bar)
            lines.append(rest)
            rest = ""
        self._local.buffer = rest
        for line in lines:
            self._write_through(line + "\n")  # whole lines: threads' prints do not interleave
            self._log(line)
        return len(text)

    def _write_through(self, text: str) -> None:
        try:
            self.passthrough.write(text)
        except Exception:  # noqa: BLE001  a closed console must not fail the job
            pass

    def _log(self, line: str) -> None:
        line = line.rsplit("\r", 1)[-1].rstrip()
        if not line.strip() or not self.budget.admit(line):
            return
        self._local.busy = True
        try:
            self.logger.log(self.level, line)
        finally:
            self._local.busy = False

    def flush(self) -> None:
        try:
            self.passthrough.flush()
        except Exception:  # noqa: BLE001
            pass

    def close_thread_buffer(self) -> None:
        rest = getattr(self._local, "buffer", "")
        self._local.buffer = ""
        if rest:
            self._write_through(rest)
            self._log(rest)

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno, ...
        return getattr(self.passthrough, name)


class RunLogCapture(logging.Handler):
    """Keeps the job's log records as contract log entries (oldest dropped past a limit)."""

    def __init__(self, limit: int = RUN_LOG_LIMIT):
        super().__init__()
        self.limit = limit
        self.entries: list[dict[str, Any]] = []
        self._entries_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == PROGRESS_LOGGER:
            return
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


def _route_loggers(level: int, capture: RunLogCapture, api_handler: APILogHandler | None) -> Callable[[], None]:
    """Attach the job's handlers to its loggers at `level`; returns the undo function."""
    attached: list[tuple[logging.Logger, logging.Handler]] = []
    # Prefect's own API handlers (added by PREFECT_LOGGING_EXTRA_LOGGERS) drop records
    # from threads without a run context; ours replaces them for the job's duration.
    displaced: list[tuple[logging.Logger, logging.Handler]] = []
    levels: dict[logging.Logger, int] = {}
    for name in JOB_LOGGERS + PREFECT_RUN_LOGGERS + (PROGRESS_LOGGER,):
        logger = logging.getLogger(name)
        # Explicit levels: an inherited PREFECT_LOGGING_LEVEL=WARNING would drop the job's story.
        levels[logger] = logger.level
        logger.setLevel(logging.INFO if name == PROGRESS_LOGGER else level)
        if name == PROGRESS_LOGGER:
            continue
        if name in JOB_LOGGERS and api_handler is not None:
            for handler in [h for h in logger.handlers if isinstance(h, APILogHandler)]:
                logger.removeHandler(handler)
                displaced.append((logger, handler))
            logger.addHandler(api_handler)
            attached.append((logger, api_handler))
        logger.addHandler(capture)
        attached.append((logger, capture))

    def undo() -> None:
        for logger, handler in attached:
            logger.removeHandler(handler)
        for logger, handler in displaced:
            logger.addHandler(handler)
        for logger, previous in levels.items():
            logger.setLevel(previous)

    return undo


@contextmanager
def job_logging(
    flow_run_id: str | None, level: str = "INFO", print_limit_bytes: int = 2 * 1024 * 1024
) -> Iterator[RunLogCapture]:
    """Meanwhile, the job's loggers, warnings and prints go to its flow run and `run_log`."""
    numeric_level = logging.getLevelName(str(level).upper())
    if not isinstance(numeric_level, int):
        numeric_level = logging.INFO
    capture = RunLogCapture()
    # Handlers gate by level too: a logger may be opened further for a reader (optimizer
    # INFO lines are progress, telemetry/optimizer_log.py) without those lines being shipped.
    gate = _LevelGate(numeric_level)
    capture.addFilter(gate)
    api_handler: APILogHandler | None = None
    if flow_run_id:
        api_handler = APILogHandler()
        api_handler.addFilter(_StampFlowRun(flow_run_id))
        api_handler.addFilter(gate)
    restore_loggers = _route_loggers(numeric_level, capture, api_handler)
    logging.captureWarnings(True)
    stdout = sys.stdout
    print_budget = PrintBudget(print_limit_bytes)
    sys.stdout = PrintLines(stdout, print_budget)
    try:
        yield capture
    finally:
        if isinstance(sys.stdout, PrintLines):
            sys.stdout.close_thread_buffer()
        sys.stdout = stdout
        print_budget.finish(logging.getLogger(PRINT_LOGGER))
        logging.captureWarnings(False)
        if api_handler is not None:
            # Send what is queued before the run turns terminal: a client that sees
            # `success` must also see the job's logs.
            api_handler.flush()
        restore_loggers()
