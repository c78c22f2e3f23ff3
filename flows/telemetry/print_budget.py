"""The cap on printed lines during the flow, which become log records shipped to the API
(telemetry/job_logging.py): the first and the last part are kept, with a note of what was
dropped in between.

How it fails: it never raises; the tail always keeps the last line whole, even one longer
than the tail's share of the limit.
"""

from __future__ import annotations

import collections
import logging
import threading

from dspy_service.contract import human_bytes


class PrintBudget:
    """The share of a job's printed lines that reach its logs: the first half of `limit`
    bytes as they come, the last half when the job ends (`finish`), with a note of what
    was dropped in between. 100 MB of prints would otherwise become about a million log
    rows in the Prefect database."""

    def __init__(self, limit: int):
        self.limit = limit
        self.head = limit // 2
        self.tail_limit = limit - self.head
        self.used = 0
        self.dropped_calls = 0
        self.dropped_bytes = 0
        self.tail: collections.deque[str] = collections.deque()
        self.tail_bytes = 0
        self.lock = threading.Lock()

    def admit(self, text: str) -> bool:
        """True: log it now. False: it went to the tail buffer (maybe dropped later)."""
        size = len(text.encode("utf-8", "replace"))
        with self.lock:
            if self.used + size <= self.head:
                self.used += size
                return True
            self.tail.append(text)
            self.tail_bytes += size
            while self.tail_bytes > self.tail_limit and len(self.tail) > 1:
                old = self.tail.popleft()
                old_size = len(old.encode("utf-8", "replace"))
                self.tail_bytes -= old_size
                self.dropped_bytes += old_size
                self.dropped_calls += 1
            return False

    def finish(self, log: logging.Logger) -> None:
        """Log the kept tail, after a warning saying what was dropped."""
        with self.lock:
            tail, dropped_calls, dropped_bytes = list(self.tail), self.dropped_calls, self.dropped_bytes
            self.tail.clear()
            self.tail_bytes = 0
        if dropped_calls:
            log.warning(
                "dspy-service: printed output passed its limit of %s (DSPY_SERVICE_JOB_PRINT_LIMIT_MB): "
                "dropped %d printed lines (print() calls and other stdout writes, %s); the last %d follow",
                human_bytes(self.limit),
                dropped_calls,
                human_bytes(dropped_bytes),
                len(tail),
            )
        for text in tail:
            log.info(text)
