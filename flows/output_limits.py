"""Caps on what one job can print.

Two routes need a cap, each keeping the first and the last part and saying what was
dropped in between:

- `HeadTailCap`: the raw stdout/stderr bytes of the job's processes, which the wrapper
  (flows/job_process.py) forwards to the worker (and the worker to its own log);
- `PrintBudget`: printed lines during the flow, which become log records shipped to the
  API (flows/job_logging.py).
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable


def human_bytes(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} bytes"


class HeadTailCap:
    """Pass the first `head` bytes through, keep only the last `tail` bytes after that."""

    def __init__(self, head: int, tail: int, write: Callable[[bytes], None], what: str = "output"):
        self.head = head
        self.tail = tail
        self.write = write
        self.what = what
        self.passed = 0
        self.dropped = 0
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_bytes = 0

    def feed(self, data: bytes) -> None:
        if self.passed < self.head:
            room = self.head - self.passed
            self.write(data[:room])
            self.passed += min(room, len(data))
            data = data[room:]
            if not data:
                return
            self.write(
                f"\n[dspy-service: the job's {self.what} passed its limit of {human_bytes(self.head + self.tail)}; "
                f"only the last {human_bytes(self.tail)} will be shown when the job ends]\n".encode()
            )
        self._tail.append(data)
        self._tail_bytes += len(data)
        while self._tail_bytes > self.tail and self._tail:
            excess = self._tail_bytes - self.tail
            first = self._tail[0]
            if len(first) <= excess:
                self._tail.popleft()
                self._tail_bytes -= len(first)
                self.dropped += len(first)
            else:
                self._tail[0] = first[excess:]
                self._tail_bytes -= excess
                self.dropped += excess

    def close(self) -> None:
        if not self._tail and not self.dropped:
            return
        if self.dropped:
            self.write(
                f"\n[dspy-service: dropped {human_bytes(self.dropped)} of the job's {self.what}; "
                f"the last {human_bytes(self._tail_bytes)} follow]\n".encode()
            )
        self.write(b"".join(self._tail))
        self._tail.clear()
        self._tail_bytes = 0


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
