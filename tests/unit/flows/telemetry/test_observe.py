"""What a running job's observer publishes: its stage, progress and time left as labels."""

from __future__ import annotations

from types import SimpleNamespace

from dspy_service import contract
from dspy_service.contract import Stage
from flows.telemetry.observe import JobObserver


def observer() -> JobObserver:
    return JobObserver(None, SimpleNamespace(optimizer_name="bootstrap"))


def test_the_job_shows_the_champion_gate_while_it_runs():
    watcher = observer()
    progress = watcher.progress
    progress.emit = lambda event: None
    gate = progress.open_bar("Average Metric", 4, stage=Stage.CHAMPION_GATE)
    progress.update_bar(gate, 2)
    labels = watcher.labels()
    assert labels[contract.STAGE] == "champion-gate"
    assert labels[contract.PROGRESS_COUNT] == progress.event_count > 0
    assert labels[contract.ESTIMATED_REMAINING] == contract.UNKNOWN_REMAINING, "the gate's length is not estimated"
    assert watcher.describe() == "bootstrap: champion-gate, Average Metric 2/4; about unknown left"


def test_a_finished_job_says_so():
    watcher = observer()
    watcher.stop(succeeded=True)
    assert watcher.progress.percent == 100.0
    assert watcher.describe() == "bootstrap: finished (0 progress events)"


def test_the_estimate_is_unknown_between_bars_not_the_last_one():
    clock = [0.0]
    watcher = observer()
    progress = watcher.progress
    progress.clock = lambda: clock[0]
    progress.emit = lambda event: None
    bar = progress.open_bar("Bootstrapping", 10, stage=Stage.COMPILE)
    clock[0] = 5.0
    progress.update_bar(bar, 5)
    assert watcher.labels()[contract.ESTIMATED_REMAINING] == 5.0
    progress.update_bar(bar, 10, final=True)  # the bar ends; nothing is open with a total
    assert watcher.labels()[contract.ESTIMATED_REMAINING] == contract.UNKNOWN_REMAINING


def test_a_call_waiting_to_retry_shows_in_the_latest_metrics_until_the_bar_moves():
    from dspy_service.lm_usage import UsageMeter
    from flows.telemetry.progress_model import JobProgress

    watcher = observer()
    events: list[dict] = []
    progress = watcher.progress = JobProgress(emit=events.append, interval=0)
    meter = UsageMeter()
    watcher.watch_usage(meter)
    bar = progress.open_bar("Average Metric", 4, stage=Stage.COMPILE)
    progress.update_bar(bar, 1)
    meter.record_retry("main", 3, 4.0, RuntimeError("LMServerError: 503"))
    assert events[-1]["event"] == "retry"
    assert events[-1]["metrics"] == {"role": "main", "attempt": 3, "wait_seconds": 4.0,
                                     "error": "RuntimeError: LMServerError: 503", "stage": "compile-program"}
    latest = watcher.labels()[contract.LATEST_METRICS]
    assert latest["retrying"]["attempt"] == 3 and latest["tqdm_n"] == 1
    assert "a main-model call is waiting 4.0 s to retry (retry 3) after RuntimeError" in watcher.describe()
    progress.update_bar(bar, 2)
    assert "retrying" not in watcher.labels()[contract.LATEST_METRICS], "the bar moved: the call went through"
