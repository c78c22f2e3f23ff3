"""The job's output on its way to the worker: capped, with the end kept to explain a crash."""

from __future__ import annotations

import io
import subprocess
import sys

from deployments.runtime.output import HeadTailCap, OutputPump


def capped(head: int, tail: int, chunks: list[bytes]) -> bytes:
    written: list[bytes] = []
    cap = HeadTailCap(head, tail, written.append, what="stdout/stderr")
    for chunk in chunks:
        cap.feed(chunk)
    cap.close()
    return b"".join(written)


def test_output_within_the_head_passes_unchanged():
    assert capped(11, 10, [b"hello ", b"world"]) == b"hello world"


def test_output_past_the_head_but_within_the_tail_loses_nothing():
    out = capped(5, 10, [b"hello ", b"world"])
    assert out.startswith(b"hello") and out.endswith(b" world")
    assert b"dropped" not in out


def test_over_the_limit_the_head_and_tail_are_kept_and_the_gap_is_named():
    data = bytes(range(65, 91)) * 4  # 104 bytes: A..Z four times
    out = capped(10, 10, [data[i : i + 7] for i in range(0, len(data), 7)])
    assert out.startswith(data[:10])
    assert out.endswith(data[-10:])
    assert b"passed its limit of 20 bytes; only the last 10 bytes will be shown" in out
    assert b"dropped 84 bytes of the job's stdout/stderr; the last 10 bytes follow" in out
    assert data[10:-10] not in out


def test_a_chunk_larger_than_the_tail_keeps_its_end():
    out = capped(2, 3, [b"ab", b"0123456789"])
    assert out.startswith(b"ab") and out.endswith(b"789") and b"dropped 7 bytes" in out


class BrokenWorker(io.RawIOBase):
    def __init__(self):
        self.writes = 0

    def write(self, data):
        self.writes += 1
        raise BrokenPipeError


def test_a_gone_worker_is_not_an_error_and_is_not_written_to_again():
    worker = BrokenWorker()
    pump = OutputPump(1024, out=worker)
    pump.note("first")
    pump.feed(b"more output\n")
    assert worker.writes == 1
    assert "more output" in pump.recent_text()


def test_the_pump_passes_a_process_output_on_and_remembers_its_end():
    out = io.BytesIO()
    pump = OutputPump(1 << 20, out=out)
    code = "import sys; print('line one'); print('ValueError: at the end', file=sys.stderr)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ticks: list[int] = []
    pump.pump(child.stdout, exited=lambda: child.poll() is not None, killed=lambda: False, tick=lambda: ticks.append(1))
    child.wait()
    pump.drain(child.stdout)
    pump.close()
    assert out.getvalue() == b"line one\nValueError: at the end\n"
    assert pump.recent_text().endswith("ValueError: at the end\n")
    assert ticks, "the stop policy is consulted while the engine runs"


def test_notes_are_marked_as_the_supervisor_s_own():
    out = io.BytesIO()
    OutputPump(1024, out=out).note("started engine 42")
    assert b"[dspy-service job process " in out.getvalue() and out.getvalue().endswith(b"started engine 42\n")
