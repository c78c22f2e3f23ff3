"""The cap on the raw stdout/stderr bytes a job's processes send to the worker.

`HeadTailCap` keeps the first and the last part and says what was dropped in between.
(Printed lines inside the flow have their own cap: flows/print_budget.py.)
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from dspy_service.contract import human_bytes


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
