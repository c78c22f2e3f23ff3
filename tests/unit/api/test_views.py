"""The job views: the Prefect API's JSON of a flow run -> the contract's job objects."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
from prefect.client.schemas.objects import FlowRun, Log, State, StateType

from api import views
from api.run_pages import RunPage
from api.status import JobStatus
from dspy_service.schemas import JobRequest
from tests.support.payloads import job_payload

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


def api_run(state_type: StateType = StateType.COMPLETED, **overrides) -> dict:
    """A flow run as POST /flow_runs/filter returns it (pydantic's JSON of the model)."""
    spec = JobRequest.model_validate(job_payload("http://127.0.0.1:1")).spec()
    fields = {
        "flow_id": uuid.uuid4(),
        "name": "tester-bootstrap-predict",
        "parameters": {"job": spec.wire(), "dataset_ref": {"url": "file:///tmp/d.jsonl", "rows": 40}},
        "labels": {"dspy.usage": '{"total": {"calls": 3}}', "dspy.progress_count": 5, "dspy.log_count": 9},
        "state": State(type=state_type, message="Process exited with status code: -9", timestamp=NOW),
        "run_count": 1,
        "created": NOW.replace(microsecond=0),
        "expected_start_time": NOW,
        "start_time": NOW - dt.timedelta(seconds=75),
        "end_time": NOW if state_type in (StateType.COMPLETED, StateType.FAILED) else None,
    }
    fields.update(overrides)
    # As the server fills them in: the state's type and name are columns of the run too.
    fields.setdefault("state_type", fields["state"].type)
    fields.setdefault("state_name", fields["state"].name)
    return json.loads(FlowRun(**fields).model_dump_json())


@pytest.mark.parametrize(
    ("state_type", "status"),
    [
        (StateType.COMPLETED, JobStatus.success),
        (StateType.FAILED, JobStatus.failed),
        (StateType.SCHEDULED, JobStatus.pending),
        (StateType.RUNNING, JobStatus.running),
    ],
)
def test_summary_of_a_run(state_type, status):
    summary = views.summary(api_run(state_type), status)
    assert summary["status"] == status.value
    assert summary["created_at"] == "2026-01-02T03:04:05+00:00", "timestamps as datetime.isoformat writes them"
    assert summary["username"] == "tester" and summary["dataset_rows"] == 40 and summary["progress_count"] == 5
    assert summary["usage"] == {"total": {"calls": 3}} and summary["log_count"] == 9
    if status is JobStatus.failed:
        assert summary["message"].startswith("the job process was killed (SIGKILL)")
        assert summary["completed_at"] == "2026-01-02T03:04:05.678901+00:00" and summary["elapsed"] == "00:01:15"
    else:
        assert summary["message"] is None
    if status is JobStatus.pending:
        assert summary["scheduled_start_at"] == "2026-01-02T03:04:05.678901+00:00"


def test_logs_split_into_entries_and_progress_events():
    run_id = uuid.uuid4()
    logs = [
        Log(name="dspy_service.progress", level=20, message='progress {"event": "bar", "metrics": {"m": 1}}',
            timestamp=NOW, flow_run_id=run_id),
        Log(name="dspy_service.progress", level=20, message="progress not json", timestamp=NOW, flow_run_id=run_id),
        Log(name="prefect.flow_runs", level=40, message="boom", timestamp=NOW, flow_run_id=run_id),
    ]  # fmt: skip
    entries, events = views.split_logs([json.loads(log.model_dump_json()) for log in logs])
    assert events == [{"event": "bar", "metrics": {"m": 1}}]
    assert [e["message"] for e in entries] == ["progress not json", "boom"]
    assert entries[1] == {
        "timestamp": "2026-01-02T03:04:05.678901+00:00",
        "level": "ERROR",
        "logger": "prefect.flow_runs",
        "message": "boom",
    }
    job = views.detail(api_run(), JobStatus.success, (entries, events), {"score": 1})
    assert job["latest_metrics"] == {"m": 1} and job["result"]["run_log"] == entries


def test_spec_fields_are_cached_per_run_but_follow_changed_parameters():
    data = api_run()
    first = views.spec_fields(data)
    assert views.spec_fields(data) is first, "parsed once per run"
    changed = json.loads(json.dumps(data))
    changed["parameters"]["job"]["username"] = "someone-else"
    assert views.spec_fields(changed)["username"] == "someone-else"
    broken = {**data, "id": str(uuid.uuid4()), "parameters": {"job": {"bogus": True}}}
    assert views.spec_fields(broken)["username"] is None


def test_a_page_shows_validating_and_running_apart():
    validating, running = api_run(StateType.RUNNING), api_run(StateType.RUNNING)
    page = RunPage([validating, running], compile_started={uuid.UUID(running["id"])}, total=7)
    body = views.page(page, limit=2, offset=4)
    assert [item["status"] for item in body["items"]] == ["validating", "running"]
    assert (body["total"], body["limit"], body["offset"]) == (7, 2, 4)


def test_submitted_names_the_job_and_its_schedule_if_any():
    run = api_run(StateType.SCHEDULED)
    assert views.submitted(run, JobStatus.pending) == {
        "job_id": run["id"],
        "status": "pending",
        "created_at": "2026-01-02T03:04:05+00:00",
        "username": "tester",
        "module_name": "predict",
        "optimizer_name": "bootstrap",
    }
    of_schedule = api_run(StateType.SCHEDULED)
    of_schedule["parameters"]["schedule_id"] = "s-1"
    assert views.submitted(of_schedule, JobStatus.pending)["schedule_id"] == "s-1"


def test_program_source_is_what_rebuilds_the_module_and_a_broken_spec_gives_none():
    run = api_run()
    source = views.program_source(run)
    spec = run["parameters"]["job"]
    assert source == {
        "module_name": spec["module_name"],
        "module_kwargs": spec["module_kwargs"],
        "signature_code": spec["signature_code"],
        "metric_code": spec["metric_code"],
    }
    assert views.program_source({**run, "parameters": {"job": {"module_name": 3}}}) is None


@pytest.mark.parametrize(("label", "shown"), [(95, "00:01:35"), (-1, None), (None, None)])
def test_a_running_job_shows_its_estimate_only_when_there_is_one(label, shown):
    labels = {"dspy.estimated_remaining": label} if label is not None else {}
    summary = views.summary(api_run(StateType.RUNNING, labels=labels), JobStatus.running)
    assert summary["estimated_remaining"] == shown
