"""GET /jobs/{id}/events on a real stack: a GEPA job's stream carries increasing progress
and ends with `result`; a reconnect with `Last-Event-ID` in the middle of the job loses no
event and repeats none (the two parts equal the stream read whole after the end); the
stream is its owner's; a bad Last-Event-ID is a 400; a failed job ends with `error`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.support.payloads import job_payload, model_config, tenant_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]

Event = dict[str, Any]  # {"id": str | None, "type": str, "data": object}


def parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    """Events of a text/event-stream body (comments and `retry:` skipped)."""
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "event" in fields:
                yield {"id": fields.get("id"), "type": fields["event"], "data": json.loads(fields["data"])}
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


def read_events(
    api: httpx.Client, job_id: str, last_id: str | None = None, stop: Callable[[list[Event]], bool] | None = None
) -> list[Event]:
    """The events until the server ends the stream, or until `stop(events)` (then the
    connection is dropped)."""
    headers = {"Last-Event-ID": last_id} if last_id else {}
    events: list[Event] = []
    timeout = httpx.Timeout(30, read=60)
    with api.stream("GET", f"/jobs/{job_id}/events", headers=headers, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in parse_sse(response.iter_lines()):
            events.append(event)
            if stop is not None and stop(events):
                break
    return events


def resumable(events: list[Event]) -> list[Event]:
    """The events that are part of the resumable sequence (usage snapshots are not)."""
    return [event for event in events if event["type"] != "usage"]


def gepa_payload(lm_url: str) -> dict[str, Any]:
    payload = job_payload(
        lm_url,
        rows=30,
        module_name="cot",
        optimizer_name="gepa",
        optimizer_kwargs={"max_metric_calls": 50},
        model_config=tenant_model(lm_url),  # a cold LM cache: the job really waits on its calls
    )
    payload["reflection_model_config"] = model_config(lm_url, name="openai/local-reflection")
    return payload


def test_a_gepa_jobs_stream_resumes_without_loss_or_repeats_and_ends_with_result(stack, local_lm):
    local_lm.set_delay(40)
    try:
        job_id = stack.submit(gepa_payload(local_lm.url))
        first = read_events(stack.api, job_id, stop=lambda seen: sum(e["type"] == "progress" for e in seen) >= 3)
        assert first[-1]["type"] == "progress" and first[-1]["id"]
        assert all(e["type"] not in ("result", "error") for e in first), "dropped in the middle of the job"
        second = read_events(stack.api, job_id, last_id=first[-1]["id"])
    finally:
        local_lm.set_delay(0)
    assert second[-1]["type"] == "result", second[-1]
    whole = read_events(stack.api, job_id)

    assert resumable(first) + resumable(second) == resumable(whole), "no event lost, none repeated"
    ids = [e["id"] for e in resumable(whole)]
    assert all(ids) and len(set(ids)) == len(ids)

    statuses = [e["data"]["status"] for e in whole if e["type"] == "status"]
    assert statuses[0] == "pending" and statuses[-1] == "success", statuses
    # the same statuses GET /jobs/{id} shows, in order: validating until the compile task starts
    assert statuses.index("validating") < statuses.index("running"), statuses
    assert [s for s in statuses if s not in ("pending",)] == ["validating", "running", "success"], statuses
    final = whole[-1]
    assert final["type"] == "result" and final["data"]["job_id"] == job_id and final["data"]["status"] == "success"
    assert final["data"].keys() == stack.api.get(f"/jobs/{job_id}/summary").json().keys(), "the summary object"

    progress = [e["data"] for e in whole if e["type"] == "progress"]
    gepa = [p["metrics"]["tqdm_n"] for p in progress if p["metrics"].get("tqdm_desc") == "GEPA Optimization"]
    assert len(gepa) >= 2 and gepa == sorted(gepa) and gepa[-1] > gepa[0], gepa
    percents = [p["metrics"]["job_percent"] for p in progress if p["event"] == "progress"]
    assert percents == sorted(percents) and percents[-1] > percents[0], percents
    job = stack.api.get(f"/jobs/{job_id}").json()
    assert sorted(map(json.dumps, progress)) == sorted(map(json.dumps, job["progress_events"])), "as GET /jobs/{id}"
    logs = [e["data"] for e in whole if e["type"] == "log"]
    assert logs and all(entry in job["logs"] for entry in logs), "entries of GET /jobs/{id}/logs"
    usage = [e for e in second if e["type"] == "usage"]
    assert usage and usage[-1]["id"] is None and usage[-1]["data"] == final["data"]["usage"]

    again = read_events(stack.api, job_id, last_id=final["id"])
    assert resumable(again) == [final], "after the end: the final event again, and only it"


def test_the_stream_is_its_owners_and_refuses_a_bad_last_event_id(stack, local_lm):
    job_id = stack.submit(job_payload(local_lm.url, rows=10))
    stranger = stack.add_user("sse-stranger")
    assert stranger.get(f"/jobs/{job_id}/events").status_code == 404
    response = stack.api.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": "not-an-id"})
    assert response.status_code == 400 and response.json()["field"] == "Last-Event-ID", response.text
    events = read_events(stack.api, job_id)
    assert events[-1]["type"] == "result", events[-1]


def test_a_failed_jobs_stream_ends_with_error(stack, local_lm):
    metric = "def metric(gold, pred, trace=None):\n    raise ValueError('broken metric')\n"
    job_id = stack.submit(job_payload(local_lm.url, rows=10, metric_code=metric))
    events = read_events(stack.api, job_id)
    final = events[-1]
    assert final["type"] == "error" and final["data"]["status"] == "failed", final
    assert "broken metric" in final["data"]["message"]
    assert [e["data"]["status"] for e in events if e["type"] == "status"][-1] == "failed"
