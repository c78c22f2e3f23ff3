"""The job views (pure translation) and the API's caches of what does not change."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid

import pytest
from prefect.client.schemas.objects import FlowRun, Log, State, StateType

from api import views
from api.gateway import JobGateway
from dspy_service.schemas import JobRequest
from dspy_service.settings import ServiceSettings
from dspy_service.status import JobStatus
from tests.support.payloads import job_payload

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


def flow_run(state_type: StateType = StateType.COMPLETED, **overrides) -> FlowRun:
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
    return FlowRun(**fields)


def as_api_json(run: FlowRun) -> dict:
    """What POST /flow_runs/filter returns for the run: pydantic's JSON of it."""
    return json.loads(run.model_dump_json())


@pytest.mark.parametrize(
    ("state_type", "status"),
    [
        (StateType.COMPLETED, JobStatus.success),
        (StateType.FAILED, JobStatus.failed),
        (StateType.SCHEDULED, JobStatus.pending),
        (StateType.RUNNING, JobStatus.running),
    ],
)
def test_views_of_the_api_json_equal_those_of_the_model(state_type, status):
    run = flow_run(state_type)
    now = NOW + dt.timedelta(seconds=5)
    assert views.common_fields(as_api_json(run), status, now) == views.common_fields(run, status, now)
    summary = views.summary(as_api_json(run), status)
    assert summary == views.summary(run, status)
    assert summary["created_at"] == "2026-01-02T03:04:05+00:00", "timestamps as datetime.isoformat writes them"
    assert summary["username"] == "tester" and summary["dataset_rows"] == 40 and summary["progress_count"] == 5
    if status is JobStatus.failed:
        assert summary["message"].startswith("the job process was killed (SIGKILL)")
        assert summary["completed_at"] == "2026-01-02T03:04:05.678901+00:00" and summary["elapsed"] == "00:01:15"


def test_logs_from_api_json_and_from_models_split_alike():
    run_id = uuid.uuid4()
    logs = [
        Log(name="dspy_service.progress", level=20, message='progress {"event": "bar", "metrics": {"m": 1}}',
            timestamp=NOW, flow_run_id=run_id),
        Log(name="dspy_service.progress", level=20, message="progress not json", timestamp=NOW, flow_run_id=run_id),
        Log(name="prefect.flow_runs", level=40, message="boom", timestamp=NOW, flow_run_id=run_id),
    ]  # fmt: skip
    entries, events = views.split_logs([json.loads(log.model_dump_json()) for log in logs])
    assert (entries, events) == views.split_logs(logs)
    assert events == [{"event": "bar", "metrics": {"m": 1}}]
    assert [e["message"] for e in entries] == ["progress not json", "boom"]
    assert entries[1] == {
        "timestamp": "2026-01-02T03:04:05.678901+00:00",
        "level": "ERROR",
        "logger": "prefect.flow_runs",
        "message": "boom",
    }
    job = views.detail(flow_run(), JobStatus.success, (entries, events), {"score": 1})
    assert job["latest_metrics"] == {"m": 1} and job["result"]["run_log"] == entries


def test_spec_fields_are_cached_per_run_but_follow_changed_parameters():
    data = as_api_json(flow_run())
    first = views.spec_fields(data)
    assert views.spec_fields(data) is first, "parsed once per run"
    changed = json.loads(json.dumps(data))
    changed["parameters"]["job"]["username"] = "someone-else"
    assert views.spec_fields(changed)["username"] == "someone-else"
    broken = {**data, "id": str(uuid.uuid4()), "parameters": {"job": {"bogus": True}}}
    assert views.spec_fields(broken)["username"] is None


def test_list_status_tells_validating_from_running():
    running = as_api_json(flow_run(StateType.RUNNING))
    assert views.list_status(running, set()) is JobStatus.validating
    assert views.list_status(running, {uuid.UUID(running["id"])}) is JobStatus.running
    assert views.list_status(as_api_json(flow_run(StateType.CANCELLED)), set()) is JobStatus.cancelled
    assert views.list_status({"id": str(uuid.uuid4()), "state_type": None}, set()) is JobStatus.pending


class CountingGateway(JobGateway):
    """The job gateway with its Prefect log read replaced by a counter (no server)."""

    def __init__(self, settle: float):
        super().__init__(client=None, settings=ServiceSettings(log_settle_seconds=settle))
        self.reads = 0

    async def logs(self, flow_run_id):
        self.reads += 1
        return [{"timestamp": "2026-01-02T03:04:05Z", "level": 20, "name": "x", "message": f"read {self.reads}"}]


def test_logs_are_cached_only_once_the_run_has_settled_in_a_terminal_state():
    gateway = CountingGateway(settle=10)
    just_ended = flow_run(StateType.COMPLETED, state=State(type=StateType.COMPLETED, timestamp=dt.datetime.now(dt.UTC)))
    running = flow_run(StateType.RUNNING, state=State(type=StateType.RUNNING, timestamp=NOW))
    cancelling = flow_run(StateType.CANCELLING, state=State(type=StateType.CANCELLING, timestamp=NOW))
    for run in (just_ended, running, cancelling):
        asyncio.run(gateway.job_logs(run))
        asyncio.run(gateway.job_logs(run))
    assert gateway.reads == 6, "nothing cached: too recent, or not terminal"

    ended = flow_run(StateType.FAILED)  # ended at NOW, long ago
    first = asyncio.run(gateway.job_logs(ended))
    assert asyncio.run(gateway.job_logs(ended)) is first and gateway.reads == 7
    # The run moved on (say, retried from the Prefect UI) and ended again: a new state id.
    ended.state = State(type=StateType.FAILED, timestamp=NOW + dt.timedelta(seconds=1))
    assert asyncio.run(gateway.job_logs(ended))[0][0]["message"] == "read 8"
