"""deployments/runtime/prefect_heartbeats.py: a flow run's heartbeats end with its body.

A stand-in engine (the attributes Prefect's heartbeat context reads) records its
heartbeats; Prefect's own context is run the same way to show the wait it adds.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from prefect import flow_engine

from deployments.runtime import prefect_heartbeats
from deployments.runtime.prefect_heartbeats import send_heartbeats

PRICE_OF_PREFECTS_STEP = 0.5  # s: Prefect's thread sleeps in 1 s steps, joined on exit


class StandInEngine:
    """What the heartbeat context uses of a FlowRunEngine."""

    def __init__(self, heartbeat_seconds: int | None = 30, final: bool = False):
        self.heartbeat_seconds = heartbeat_seconds
        self.flow_run = SimpleNamespace(state=SimpleNamespace(is_final=lambda: final))
        self.logger = SimpleNamespace(debug=lambda *a, **k: None)
        self.beats: list[tuple[float, str]] = []

    def _build_heartbeat_event_template(self):
        return "resource", ["related"]

    def _emit_flow_run_heartbeat(self, resource, related):
        assert (resource, related) == ("resource", ["related"])
        self.beats.append((time.monotonic(), threading.current_thread().name))


def seconds_to_leave(context, engine: StandInEngine, run_for: float = 0.2) -> float:
    """Run a body of `run_for` seconds in the context; how long leaving it took."""
    with context(engine):
        time.sleep(run_for)
        leaving = time.monotonic()
    return time.monotonic() - leaving


def test_the_run_leaves_at_once_after_one_heartbeat_from_another_thread():
    engine = StandInEngine()
    assert seconds_to_leave(send_heartbeats, engine) < 0.1
    assert len(engine.beats) == 1  # the next is due after the interval (30 s minimum)
    assert engine.beats[0][1] != threading.current_thread().name


def test_prefects_own_context_waits_for_its_step():
    """The cause: if this fails, Prefect no longer waits and install() can go."""
    assert seconds_to_leave(flow_engine._send_heartbeats, StandInEngine()) > PRICE_OF_PREFECTS_STEP


def test_a_final_state_gets_no_heartbeat_and_none_configured_starts_no_thread():
    final = StandInEngine(final=True)
    assert seconds_to_leave(send_heartbeats, final) < 0.1
    assert final.beats == []
    threads = threading.active_count()
    off = StandInEngine(heartbeat_seconds=None)
    with send_heartbeats(off):
        assert threading.active_count() == threads
    assert off.beats == []


def test_heartbeats_repeat_at_the_interval(monkeypatch):
    monkeypatch.setattr(flow_engine, "MINIMUM_HEARTBEAT_INTERVAL", 0.05)
    engine = StandInEngine(heartbeat_seconds=0.05)
    seconds_to_leave(send_heartbeats, engine, run_for=0.5)
    assert 5 <= len(engine.beats) <= 12
    gaps = [b[0] - a[0] for a, b in zip(engine.beats, engine.beats[1:], strict=False)]
    assert min(gaps) >= 0.045


@pytest.fixture
def prefects_own():
    original = flow_engine._send_heartbeats
    yield original
    flow_engine._send_heartbeats = original


def test_install_replaces_the_engines_context(prefects_own):
    assert prefect_heartbeats.install() is True
    assert flow_engine._send_heartbeats is send_heartbeats
    assert prefects_own is not send_heartbeats


def test_install_leaves_a_prefect_without_it_alone(prefects_own, monkeypatch):
    monkeypatch.delattr(flow_engine, "_send_heartbeats")
    assert prefect_heartbeats.install() is False
    assert not hasattr(flow_engine, "_send_heartbeats")
