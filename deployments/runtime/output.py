"""The job's output on its way to the worker: the engine's stdout/stderr, capped, plus the
supervisor's own notes.

`HeadTailCap` keeps the first and the last part of the raw bytes and says what was
dropped in between (printed lines inside the flow have their own cap:
flows/telemetry/print_budget.py). `OutputPump` reads the engine's pipe until the engine exits,
feeds the cap, and keeps the last few KB to explain a crash. A worker that is gone
(broken pipe) is not an error: the pump keeps draining the engine so it never blocks.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import os
import selectors
import sys
import time
from collections.abc import Callable
from typing import IO, BinaryIO

from dspy_service.contract import human_bytes

POLL_SECONDS = 0.2
# An engine that exited while a process it started still holds the pipe open: how long
# its output is still passed on before the supervisor kills what is left.
EXITED_DRAIN_SECONDS = 1.0
RECENT_CHUNKS = 64


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


class OutputPump:
    """Passes the engine's output to the worker (capped) and remembers its recent end."""

    def __init__(self, limit_bytes: int, out: BinaryIO | None = None):
        self._out = out if out is not None else sys.stdout.buffer
        self._broken = False
        self.cap = HeadTailCap(limit_bytes // 2, limit_bytes - limit_bytes // 2, self.write, what="stdout/stderr")
        self.recent: collections.deque[bytes] = collections.deque(maxlen=RECENT_CHUNKS)

    def write(self, data: bytes) -> None:
        """Straight to the worker; once the worker is gone, silently nowhere."""
        if self._broken or not data:
            return
        try:
            self._out.write(data)
            self._out.flush()
        except (BrokenPipeError, OSError):
            self._broken = True

    def note(self, message: str) -> None:
        """A line of the supervisor's own, in the job's output (the worker's log)."""
        now = dt.datetime.now().strftime("%H:%M:%S.%f")[:-3]
        self.write(f"{now} [dspy-service job process {os.getpid()}] {message}\n".encode())

    def feed(self, data: bytes) -> None:
        self.cap.feed(data)
        self.recent.append(data[-4096:])

    def recent_text(self) -> str:
        """The end of what the engine printed, decoded, to explain how it ended."""
        return b"".join(self.recent)[-16384:].decode("utf-8", "replace")

    def forget_recent(self) -> None:
        self.recent.clear()

    def pump(self, stream: IO[bytes], exited: Callable[[], bool], killed: Callable[[], bool], tick: Callable[[], None]):
        """Pass `stream` on until the engine has `exited` and its output is drained (or it
        was `killed`, or a leftover holder of the pipe had its moment); `tick` runs at least
        every POLL_SECONDS."""
        os.set_blocking(stream.fileno(), False)
        selector = selectors.DefaultSelector()
        selector.register(stream, selectors.EVENT_READ)
        open_stream = True
        exited_at: float | None = None
        while True:
            if open_stream:
                open_stream = self._read_ready(selector, stream)
            else:
                time.sleep(POLL_SECONDS / 4)
            tick()
            if exited():
                exited_at = exited_at or time.monotonic()
                if not open_stream or killed() or time.monotonic() - exited_at > EXITED_DRAIN_SECONDS:
                    break
        selector.close()

    def _read_ready(self, selector: selectors.BaseSelector, stream: IO[bytes]) -> bool:
        """Read what is there; False at EOF (the engine and all sharing its pipe closed it)."""
        for _ in selector.select(POLL_SECONDS):
            try:
                data = os.read(stream.fileno(), 65536)
            except BlockingIOError:
                continue
            if not data:
                selector.unregister(stream)
                return False
            self.feed(data)
        return True

    def drain(self, stream: IO[bytes]) -> None:
        """Pass on what is left in the pipe, then close it."""
        with contextlib.suppress(OSError, ValueError):
            while data := os.read(stream.fileno(), 65536):
                self.cap.feed(data)
        with contextlib.suppress(OSError):
            stream.close()

    def close(self) -> None:
        """Show the kept tail of a capped output."""
        self.cap.close()
