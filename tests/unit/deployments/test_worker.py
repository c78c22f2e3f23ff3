"""The job worker (deployments/worker.py): pinned to the Prefect internals it overrides,
its reads memoized without keeping errors, its loop woken without waiting for the poll.

End to end (a real event wakes a real worker; polling when the stream is down):
tests/integration/test_event_pickup.py."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid

import prefect
import pytest
from prefect.workers.base import BaseWorker
from prefect.workers.process import ProcessWorker

from deployments import worker as job_worker
from deployments.stack import worker_component

# Private BaseWorker members the job worker overrides or reads, with the parameters it
# passes. If Prefect renames or reshapes one, the worker would silently stop working.
PRIVATE_METHODS = {
    "_submit_scheduled_flow_runs": ["self", "flow_run_response"],
    "_propose_pending_state": ["self", "flow_run"],
    "_submit_run_and_capture_errors": ["self", "flow_run", "task_status"],
    "_sync_and_initialize": ["self"],
    "_emit_worker_started_event": ["self"],
    "get_and_submit_flow_runs": ["self"],
    "setup": ["self"],
    "start": ["self", "run_once", "with_healthcheck", "printer"],
}
PRIVATE_ATTRIBUTES = ["_work_pool", "_submitting_flow_run_ids", "_client", "_logger", "_started_event"]


def test_pinned_to_the_prefect_version_whose_internals_it_overrides():
    assert prefect.__version__ == job_worker.PREFECT_VERSION, (
        "Prefect changed: check every override of deployments/worker.py against the new BaseWorker, "
        "then update PREFECT_VERSION"
    )


@pytest.mark.parametrize("name", sorted(PRIVATE_METHODS))
def test_the_overridden_prefect_methods_still_exist_with_the_same_parameters(name):
    method = getattr(BaseWorker, name)
    assert list(inspect.signature(method).parameters) == PRIVATE_METHODS[name]


def test_the_private_attributes_it_reads_are_set_by_the_base_worker():
    worker = job_worker.JobWorker(work_pool_name="pool", name="pin-check")
    for name in PRIVATE_ATTRIBUTES:
        assert hasattr(worker, name), name
    assert worker._submitting_flow_run_ids == set() and worker._work_pool is None


def test_it_is_the_process_worker_type_so_the_pool_and_its_template_stay():
    assert job_worker.JobWorker.type == ProcessWorker.type == "process"
    assert issubclass(job_worker.JobWorker, ProcessWorker)
    assert job_worker.JobWorker.get_default_base_job_template() == ProcessWorker.get_default_base_job_template()


def test_the_stack_starts_the_job_worker_with_its_pool_and_name(tmp_path):
    component = worker_component("worker-1", "dspy-service", tmp_path)
    assert component.command[1:5] == ["-m", "deployments.worker", "--pool", "dspy-service"]
    assert component.command[-2] == "--name" and component.command[-1].endswith("-worker-1")
    args = job_worker.parse_args(component.command[3:])
    assert args.pool == "dspy-service" and args.limit is None and args.prefetch_seconds is None


class Reads:
    def __init__(self):
        self.calls: list[str] = []
        self.missing = False

    async def read_deployment(self, deployment_id):
        self.calls.append(f"deployment {deployment_id}")
        if self.missing:
            raise LookupError("gone")
        return {"id": deployment_id, "read": len(self.calls)}

    async def read_flow(self, flow_id):
        self.calls.append(f"flow {flow_id}")
        return {"id": flow_id}


def test_a_deployment_is_read_once_per_ttl_and_a_flow_once():
    client, now = Reads(), [0.0]
    reads = job_worker.SubmissionReads(client, ttl=5.0, clock=lambda: now[0])

    async def scenario():
        first = await client.read_deployment("d")  # the worker calls the client: it is memoized
        again = await client.read_deployment("d")
        assert first is again
        now[0] = 5.5
        assert (await client.read_deployment("d"))["read"] == 2
        for _ in range(3):
            await client.read_flow("f")

    asyncio.run(scenario())
    assert client.calls == ["deployment d", "deployment d", "flow f"]
    assert reads.read_deployment == client.read_deployment


def test_a_failed_read_is_not_kept():
    client = Reads()
    job_worker.SubmissionReads(client, ttl=5.0)

    async def scenario():
        client.missing = True  # e.g. ObjectNotFound: the run's deployment was deleted
        with pytest.raises(LookupError):
            await client.read_deployment("d")
        client.missing = False
        return await client.read_deployment("d")

    assert asyncio.run(scenario())["id"] == "d"
    assert client.calls == ["deployment d", "deployment d"]


def test_the_loop_scans_at_once_when_woken_and_at_the_poll_interval_otherwise(monkeypatch):
    worker = job_worker.JobWorker(work_pool_name="pool", name="wake-check")
    scans: list[float] = []

    async def scan():
        scans.append(time.monotonic())
        return []

    monkeypatch.setattr(worker, "get_and_submit_flow_runs", scan)

    async def scenario():
        started = time.monotonic()
        asyncio.get_running_loop().call_later(0.05, worker.pickup.wake)
        with prefect.settings.temporary_settings({prefect.settings.PREFECT_WORKER_QUERY_SECONDS: 3}):
            await worker.wait_and_submit()
        return started

    started = asyncio.run(scenario())
    assert len(scans) == 1 and scans[0] - started < 1.0


def test_a_finished_run_wakes_the_loop(monkeypatch):
    """A run's process exit frees a slot: the next queued run is looked for at once."""
    worker = job_worker.JobWorker(work_pool_name="pool", name="slot-check")

    async def finished(self, flow_run, task_status=None):
        return "result"

    monkeypatch.setattr(ProcessWorker, "_submit_run_and_capture_errors", finished)
    flow_run = prefect.client.schemas.objects.FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4())
    assert asyncio.run(worker._submit_run_and_capture_errors(flow_run)) == "result"
    assert worker.pickup.wakes == 1
