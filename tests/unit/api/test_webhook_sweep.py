"""The webhook sweep's decision: which job ends need a delivery run."""

from __future__ import annotations

import datetime as dt

from api.webhook_sweep import GRACE_SECONDS, missed
from dspy_service.settings import ServiceSettings
from dspy_service.webhooks import event_id

NOW = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
SETTINGS = ServiceSettings(webhook_give_up_seconds=3600, webhook_max_retry_seconds=300, webhook_timeout_seconds=10)


def run(job: str, age: float, state_type: str = "COMPLETED") -> dict:
    stamp = (NOW - dt.timedelta(seconds=age)).isoformat()
    return {"id": job, "state": {"id": f"state-{job}", "type": state_type, "timestamp": stamp}}


def record(job: str, last_age: float, **fields) -> dict:
    at = (NOW - dt.timedelta(seconds=last_age)).isoformat()
    return {"event_id": event_id(job, f"state-{job}"), "attempts": [{"at": at, "status_code": 500}], **fields}


def test_ends_without_a_log_after_the_grace_get_a_delivery():
    runs = [run("a", GRACE_SECONDS + 5), run("b", 5), run("c", 10_000), run("d", 100, "RUNNING")]
    assert missed(runs, {}, NOW, SETTINGS) == [("a", f"dspy-webhook-sweep-{event_id('a', 'state-a')}-0")]


def test_stalled_deliveries_are_restarted_and_finished_ones_left_alone():
    runs = [run(job, 2000) for job in "abcde"]
    logs = {
        "a": [record("a", 1000)],  # stalled: its run died
        "b": [record("b", 30)],  # still retrying
        "c": [record("c", 1000, delivered=True)],
        "d": [record("d", 1000, gave_up=True)],
        "e": [{**record("e", 1000), "event_id": "an-older-end"}],  # this end has no entry yet
    }
    found = dict(missed(runs, logs, NOW, SETTINGS))
    assert set(found) == {"a", "e"}
    assert found["a"].endswith("-1") and found["e"].endswith("-0")
