"""The job gateway's caches of what no longer changes (no server: the log read is counted)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

from prefect.client.schemas.responses import OrchestrationResult, SetStateStatus

from api.gateway import JobGateway
from dspy_service.settings import ServiceSettings

LONG_AGO = "2026-01-02T03:04:05.678901Z"


class CountingGateway(JobGateway):
    """The job gateway with its Prefect log read replaced by a counter."""

    def __init__(self, settle: float):
        super().__init__(client=None, settings=ServiceSettings(log_settle_seconds=settle))
        self.reads = 0

    async def logs(self, run_id):
        self.reads += 1
        return [{"timestamp": "2026-01-02T03:04:05Z", "level": 20, "name": "x", "message": f"read {self.reads}"}]


def run(state_type: str, timestamp: str) -> dict:
    state = {"id": str(uuid.uuid4()), "type": state_type, "name": state_type.title(), "timestamp": timestamp}
    return {"id": str(uuid.uuid4()), "state_type": state_type, "state": state}


def test_logs_are_cached_only_once_the_run_has_settled_in_a_terminal_state():
    gateway = CountingGateway(settle=10)
    just_ended = run("COMPLETED", dt.datetime.now(dt.UTC).isoformat())
    for unsettled in (just_ended, run("RUNNING", LONG_AGO), run("CANCELLING", LONG_AGO)):
        asyncio.run(gateway.job_logs(unsettled))
        asyncio.run(gateway.job_logs(unsettled))
    assert gateway.reads == 6, "nothing cached: too recent, or not terminal"

    ended = run("FAILED", LONG_AGO)
    first = asyncio.run(gateway.job_logs(ended))
    assert asyncio.run(gateway.job_logs(ended)) is first and gateway.reads == 7
    # The run moved on (say, retried from the Prefect UI) and ended again: a new state id.
    ended["state"] = {**ended["state"], "id": str(uuid.uuid4())}
    assert asyncio.run(gateway.job_logs(ended))[0][0]["message"] == "read 8"


class TaggingClient:
    def __init__(self):
        self.updates: list = []
        self.states: list = []

    async def update_flow_run(self, run_id, tags):
        self.updates.append((str(run_id), tags))

    async def set_flow_run_state(self, run_id, state, force=False):
        self.states.append((state.type.value, force))
        return OrchestrationResult(state=state, status=SetStateStatus.ACCEPT, details={"type": "accept_details"})


def test_cancelling_a_pending_run_with_a_notify_url_tags_it_for_its_webhook_first():
    client = TaggingClient()
    gateway = JobGateway(client=client, settings=ServiceSettings())
    scheduled = {**run("SCHEDULED", LONG_AGO), "tags": ["dspy-service"], "parameters": {"job": {"notify_url": "x"}}}
    plain = {**run("SCHEDULED", LONG_AGO), "tags": ["dspy-service"], "parameters": {"job": {}}}
    asyncio.run(gateway.cancel(scheduled))
    asyncio.run(gateway.cancel(plain))
    assert client.updates == [(scheduled["id"], ["dspy-service", "dspy-notify"])]
    # Proposed, not forced: Prefect turns it into Cancelled when no process exists yet.
    assert client.states == [("CANCELLING", False), ("CANCELLING", False)]


class TaskRunClient:
    """Answers task-run reads from `started` (flow-run ids whose work task exists); counted."""

    def __init__(self):
        self.started: set[uuid.UUID] = set()
        self.asked: list[set[uuid.UUID]] = []

    async def read_task_runs(self, flow_run_filter, task_run_filter):
        wanted = set(flow_run_filter.id.any_)
        self.asked.append(wanted)
        return [type("TaskRun", (), {"flow_run_id": i})() for i in wanted & self.started]


def test_a_running_state_known_to_have_reached_compile_is_not_asked_again_but_a_new_state_is():
    client = TaskRunClient()
    gateway = JobGateway(client=client, settings=ServiceSettings())
    validating, compiling = run("RUNNING", LONG_AGO), run("RUNNING", LONG_AGO)
    for r in (validating, compiling):
        r["state_id"] = r["state"]["id"]
    client.started.add(uuid.UUID(compiling["id"]))
    assert asyncio.run(gateway.compile_started([validating, compiling])) == {uuid.UUID(compiling["id"])}
    # Asked again: only the run still validating (it may have started since).
    client.started.add(uuid.UUID(validating["id"]))
    both = {uuid.UUID(validating["id"]), uuid.UUID(compiling["id"])}
    assert asyncio.run(gateway.compile_started([validating, compiling])) == both
    assert client.asked[1] == {uuid.UUID(validating["id"])}
    assert asyncio.run(gateway.compile_started([validating, compiling])) == both and len(client.asked) == 2
    # A retry from the Prefect UI: a new Running state, validating again until its task runs.
    compiling["state_id"] = str(uuid.uuid4())
    client.started.discard(uuid.UUID(compiling["id"]))
    assert asyncio.run(gateway.compile_started([compiling])) == set()
