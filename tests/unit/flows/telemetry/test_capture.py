"""Every progress source reports to the job only while `capture_progress()` is active."""

from __future__ import annotations

import io
import logging

import gepa
import pytest
import tqdm

from flows.telemetry.capture import capture_progress
from flows.telemetry.progress_model import JobProgress
from flows.telemetry.tqdm_hook import ReportingTqdm


def test_tqdm_bars_report_while_captured_and_are_plain_afterwards():
    events: list[dict] = []
    progress = JobProgress(emit=events.append, interval=0)
    with capture_progress(progress):
        assert tqdm.tqdm is ReportingTqdm
        for _ in tqdm.tqdm(range(5), desc="work", file=io.StringIO(), mininterval=0):
            pass
        with tqdm.tqdm(total=3, disable=True) as hidden:  # disabled bars report nothing
            hidden.update(3)
    assert tqdm.tqdm is not ReportingTqdm
    reported = [e["metrics"] for e in events]
    assert [m["tqdm_n"] for m in reported] == sorted(m["tqdm_n"] for m in reported)
    assert reported[-1]["tqdm_n"] == 5 and reported[-1]["tqdm_total"] == 5 and reported[-1]["final"]
    assert all(m["tqdm_desc"] == "work" for m in reported)
    count = len(events)
    for _ in tqdm.tqdm(range(3), file=io.StringIO()):
        pass
    assert len(events) == count


def test_everything_is_undone_and_open_bars_end_when_the_job_raises():
    events: list[dict] = []
    progress = JobProgress(emit=events.append, interval=0)
    optimize = gepa.optimize
    handlers = list(logging.getLogger("dspy.teleprompt").handlers)
    with pytest.raises(RuntimeError), capture_progress(progress):
        assert gepa.optimize is not optimize
        bar = tqdm.tqdm(total=10, desc="left open", file=io.StringIO())
        bar.update(4)
        raise RuntimeError("the optimizer failed")
    assert gepa.optimize is optimize and tqdm.tqdm is not ReportingTqdm
    assert logging.getLogger("dspy.teleprompt").handlers == handlers
    assert events[-1]["metrics"]["tqdm_desc"] == "left open"
    assert events[-1]["metrics"]["tqdm_n"] == 4 and events[-1]["metrics"]["final"]
