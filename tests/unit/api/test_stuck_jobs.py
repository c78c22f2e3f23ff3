"""Which stored runs the sweep ends, and how (the decision only; the sweep itself runs
against a real server in tests/integration/reliability/test_stuck_jobs.py)."""

from __future__ import annotations

import datetime as dt
import uuid

from prefect.client.schemas.objects import StateType

from api.stuck_jobs import stuck_runs
from dspy_service.contract import STUCK_CANCEL_MESSAGE, STUCK_PENDING_MESSAGE
from dspy_service.settings import ServiceSettings

NOW = dt.datetime(2026, 1, 2, 12, 0, tzinfo=dt.UTC)
SETTINGS = ServiceSettings(stuck_pending_seconds=300, zombie_after_seconds=120)


def run(state_type: str, seconds_ago: float | None) -> dict:
    stamp = None if seconds_ago is None else (NOW - dt.timedelta(seconds=seconds_ago)).isoformat()
    state = {"type": state_type, "name": state_type.title(), "timestamp": stamp}
    return {"id": str(uuid.uuid4()), "state_type": state_type, "state": state}


def test_runs_past_their_threshold_are_ended_with_a_reason():
    pending, cancelling = run("PENDING", 301), run("CANCELLING", 121)
    stuck = {s.run_id: s for s in stuck_runs([pending, cancelling], NOW, SETTINGS)}
    crashed, cancelled = stuck[uuid.UUID(pending["id"])], stuck[uuid.UUID(cancelling["id"])]
    assert crashed.end_state.type is StateType.CRASHED and crashed.end_state.message == STUCK_PENDING_MESSAGE
    assert cancelled.end_state.type is StateType.CANCELLED and cancelled.end_state.message == STUCK_CANCEL_MESSAGE
    assert (crashed.state_name, round(crashed.age_seconds)) == ("Pending", 301)


def test_runs_within_their_threshold_or_in_other_states_are_left_alone():
    runs = [
        run("PENDING", 299),  # a worker may still be starting its process
        run("CANCELLING", 119),  # the worker may still confirm
        run("CANCELLING", 200) | {"state": {"type": "CANCELLING", "timestamp": None}},
        run("RUNNING", 10_000),
        run("SCHEDULED", 10_000),
    ]
    assert stuck_runs(runs, NOW, SETTINGS) == []


def test_each_state_has_its_own_threshold():
    # Pending for 200 s is within stuck_pending_seconds; Cancelling for 200 s is past zombie_after_seconds.
    stuck = stuck_runs([run("PENDING", 200), run("CANCELLING", 200)], NOW, SETTINGS)
    assert [s.end_state.type for s in stuck] == [StateType.CANCELLED]
