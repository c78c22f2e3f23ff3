"""The job's progress state without Prefect: tqdm fields, throttling, estimates, stage spans."""

from __future__ import annotations

import json
import logging

import pytest

from dspy_service.contract import STAGE_SPANS, Stage
from flows.telemetry.progress_model import JobProgress, Throttle, tqdm_metrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_tqdm_fields_from_n_total_elapsed():
    metrics = tqdm_metrics(30, 120, 15.0, desc="GEPA Optimization")
    assert metrics == {
        "tqdm_total": 120,
        "tqdm_n": 30,
        "tqdm_elapsed": 15.0,
        "tqdm_rate": 2.0,
        "tqdm_remaining": 45.0,
        "tqdm_percent": 25.0,
        "tqdm_desc": "GEPA Optimization",
    }


def test_tqdm_fields_unknown_before_progress_and_without_total():
    start = tqdm_metrics(0, 10, 0.0)
    assert start["tqdm_rate"] is None and start["tqdm_remaining"] is None and start["tqdm_percent"] == 0.0
    open_ended = tqdm_metrics(5, None, 2.0)
    assert open_ended["tqdm_rate"] == 2.5 and open_ended["tqdm_remaining"] is None
    assert open_ended["tqdm_percent"] is None and open_ended["tqdm_desc"] is None
    overshoot = tqdm_metrics(12, 10, 6.0)  # GEPA may pass its budget a little
    assert overshoot["tqdm_remaining"] == 0.0 and overshoot["tqdm_percent"] == 120.0


def test_throttle_emits_at_most_once_per_interval_and_keeps_the_newest():
    clock = FakeClock()
    throttle = Throttle(interval=1.0, clock=clock)
    assert throttle.offer("bar", 1) == [1]
    assert throttle.offer("bar", 2) == []
    assert throttle.offer("bar", 3) == []
    assert throttle.offer("other", "x") == ["x"], "each key has its own budget"
    assert throttle.due() == [], "pending item waits for the interval"
    clock.now += 1.0
    assert throttle.due() == [3], "the newest pending item comes out, older ones are replaced"
    assert throttle.offer("bar", 4) == []
    assert throttle.offer("bar", 5, final=True) == [5], "a final item goes out at once"
    assert throttle.due() == [] and throttle.drain() == []


def test_a_fast_bar_cannot_flood():
    clock = FakeClock()
    events: list[dict] = []
    progress = JobProgress(clock=clock, emit=events.append)
    bar = progress.open_bar("Average Metric", 10_000, stage="compile-program")
    for n in range(1, 10_001):
        clock.now += 0.0005  # 2000 updates per second for 5 s
        progress.update_bar(bar, n)
        progress.flush_due()
    progress.finish()
    ns = [e["metrics"]["tqdm_n"] for e in events if e["event"] == "progress"]
    assert 5 <= len(ns) <= 7, ns
    assert ns == sorted(ns) and ns[-1] == 10_000, "the last state always gets out"
    assert events[-1]["metrics"]["final"] is True
    assert progress.event_count == len(events)


def test_estimated_remaining_adds_the_test_evaluation_to_the_compile_bar():
    clock = FakeClock()
    progress = JobProgress(clock=clock, emit=lambda e: None, test_examples=20)
    assert progress.estimated_remaining() is None
    outer = progress.open_bar("MIPROv2 trials", 10, synthetic=True, stage="compile-program")
    inner = progress.open_bar("Average Metric", 40, stage="compile-program")
    progress.update_bar(inner, 40, elapsed=10.0, final=True)  # 4 examples/s measured
    progress.update_bar(outer, 2, elapsed=60.0)  # 30 s per trial
    # 8 trials x 30 s + 2 programs x 20 test examples / 4 per second
    assert progress.estimated_remaining() == pytest.approx(240 + 10)


def test_estimated_remaining_in_evaluation_counts_the_pass_still_ahead():
    clock = FakeClock()
    progress = JobProgress(clock=clock, emit=lambda e: None, test_examples=20)
    baseline = progress.open_bar("Average Metric", 20, stage="evaluate-programs")
    progress.update_bar(baseline, 5, elapsed=5.0)  # 1 example/s
    assert progress.estimated_remaining() == pytest.approx(15 + 20)
    progress.update_bar(baseline, 20, elapsed=20.0, final=True)
    optimized = progress.open_bar("Average Metric", 20, stage="evaluate-programs")
    progress.update_bar(optimized, 10, elapsed=5.0)
    assert progress.estimated_remaining() == pytest.approx(5)
    assert 85 < progress.percent < 98


def test_progress_events_travel_as_progress_log_records(caplog):
    progress = JobProgress(interval=0)
    with caplog.at_level(logging.INFO, logger="dspy_service.progress"):
        progress.score_event("candidate", {"optimizer": "GEPA", "candidate": 1, "score": 0.5})
    record = caplog.records[-1]
    assert record.name == "dspy_service.progress" and record.message.startswith("progress ")
    event = json.loads(record.message[len("progress ") :])
    assert set(event) == {"timestamp", "event", "metrics"}
    assert event["event"] == "candidate" and event["metrics"]["score"] == 0.5


def test_many_short_nested_bars_share_one_budget():
    clock = FakeClock()
    events: list[dict] = []
    progress = JobProgress(clock=clock, emit=events.append)
    outer = progress.open_bar("GEPA Optimization", 300, stage="compile-program")
    for step in range(100):  # 100 minibatch evaluations of 3 examples in 10 s
        inner = progress.open_bar("Average Metric", 3, stage="compile-program")
        for n in (1, 2, 3):
            clock.now += 0.1 / 3
            progress.update_bar(inner, n, final=n == 3)
        progress.update_bar(outer, 3 * (step + 1))
        progress.flush_due()
    progress.update_bar(outer, 300, final=True)
    progress.finish()
    inner_events = [e for e in events if e["metrics"]["tqdm_desc"] == "Average Metric"]
    outer_events = [e["metrics"]["tqdm_n"] for e in events if e["metrics"]["tqdm_desc"] == "GEPA Optimization"]
    assert len(inner_events) <= 12, len(inner_events)
    assert 10 <= len(outer_events) <= 13 and outer_events == sorted(outer_events) and outer_events[-1] == 300


def test_the_champion_gate_has_its_share_of_the_percentage():
    assert Stage.CHAMPION_GATE in STAGE_SPANS
    events: list[dict] = []
    progress = JobProgress(clock=FakeClock(), emit=events.append, interval=0)
    for stage in (Stage.EVALUATE, Stage.EVALUATE):  # baseline, then optimized
        scoring = progress.open_bar("Average Metric", 10, stage=stage)
        progress.update_bar(scoring, 10, final=True)
    before_gate = progress.percent
    gate = progress.open_bar("Average Metric", 10, stage=Stage.CHAMPION_GATE)
    assert progress.stage == "champion-gate"
    start, end = STAGE_SPANS[Stage.CHAMPION_GATE]
    assert progress.percent == max(before_gate, start)
    progress.update_bar(gate, 5)
    assert progress.percent == pytest.approx(start + (end - start) / 2)
    progress.update_bar(gate, 10, final=True)
    assert progress.percent == pytest.approx(end)
    assert events[-1]["metrics"]["stage"] == "champion-gate" and events[-1]["metrics"]["final"]
    assert progress.estimated_remaining() is None, "the gate's length is not estimated"
