"""tqdm bars report to the job however the code that draws them imported tqdm."""

from __future__ import annotations

import io
import sys
import types

import tqdm

from flows.telemetry.progress_model import JobProgress
from flows.telemetry.tqdm_hook import ReportingTqdm, reporting_tqdm


def module_binding_tqdm(name: str) -> types.ModuleType:
    """A module that did `from tqdm import tqdm` (as GEPA's engine does)."""
    module = types.ModuleType(name)
    exec("from tqdm import tqdm", module.__dict__)
    sys.modules[name] = module
    return module


def test_bindings_made_before_and_during_the_job_report_and_are_restored():
    bound_before = module_binding_tqdm("tqdm_bound_before_the_job")
    events: list[dict] = []
    progress = JobProgress(emit=events.append, interval=0)
    try:
        with reporting_tqdm(progress):
            bound_during = module_binding_tqdm("tqdm_bound_during_the_job")
            assert bound_before.tqdm is ReportingTqdm and bound_during.tqdm is ReportingTqdm
            for _ in bound_before.tqdm(range(2), desc="engine", file=io.StringIO()):
                pass
        assert bound_before.tqdm is tqdm.std.tqdm and bound_during.tqdm is tqdm.std.tqdm
        assert tqdm.std.tqdm is not ReportingTqdm, "tqdm's own module keeps its class"
    finally:
        del sys.modules["tqdm_bound_before_the_job"], sys.modules["tqdm_bound_during_the_job"]
    assert [(e["metrics"]["tqdm_desc"], e["metrics"]["tqdm_n"]) for e in events][-1] == ("engine", 2)


def test_bars_on_stdout_are_drawn_on_the_stream_behind_the_job_capture():
    class CapturedStdout(io.StringIO):
        passthrough = io.StringIO()

    captured = CapturedStdout()
    with reporting_tqdm(JobProgress(emit=lambda event: None)):
        bar = tqdm.tqdm(total=1, desc="drawn", file=captured, mininterval=0)
        bar.update(1)
        bar.close()
    assert "drawn" in CapturedStdout.passthrough.getvalue() and captured.getvalue() == ""
