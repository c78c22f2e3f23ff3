"""The job worker (deployments/worker.py): pinned to the Prefect internals it overrides,
its reads memoized without keeping errors, its loop woken without waiting for the poll.

End to end (a real event wakes a real worker; polling when the stream is down):
tests/integration/test_event_pickup.py."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid

import anyio
import prefect
import prefect.workers.process
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
    "_give_worker_labels_to_flow_run": ["self", "flow_run_id"],
    "_submit_run_and_capture_errors": ["self", "flow_run", "task_status"],
    "_sync_and_initialize": ["self"],
    "_emit_worker_started_event": ["self"],
    "get_and_submit_flow_runs": ["self"],
    "setup": ["self"],
    "start": ["self", "run_once", "with_healthcheck", "printer"],
}
PRIVATE_ATTRIBUTES = [
    "_work_pool", "_work_pool_name", "_submitting_flow_run_ids", "_client", "_logger", "_started_event",
    "_runs_task_group",
]


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


class LabelsClient:
    """The worker's client for the label PATCH only: hangs (a retried 503 "database is locked"
    under SQLite contention) until released, or fails."""

    def __init__(self, error: Exception | None = None):
        self.error = error
        self.release = asyncio.Event()
        self.labelled: list[tuple[uuid.UUID, dict]] = []

    async def update_flow_run_labels(self, flow_run_id, labels):
        if self.error:
            raise self.error
        await self.release.wait()
        self.labelled.append((flow_run_id, labels))


class Submission:
    """A JobWorker with Prefect's real `_submit_run_and_capture_errors` path; the job
    configuration, the Submitting proposal and the process start (`run`) are recorded."""

    def __init__(self, monkeypatch, client: LabelsClient):
        self.worker = worker = job_worker.JobWorker(work_pool_name="pool", name="labels-check")
        self.events: list[str] = []
        worker._client = client
        worker._work_pool = prefect.client.schemas.objects.WorkPool(name="pool", type="process")

        class Configuration:
            @classmethod
            async def resolve_for_flow_run(cls, flow_run, **_):
                return cls()

        async def propose_submitting(flow_run):
            self.events.append("submitting")

        async def run(flow_run, configuration, task_status=None):
            self.events.append("process started")
            task_status.started(4242)
            return prefect.workers.process.ProcessWorkerResult(status_code=0, identifier="4242")

        async def propose_crashed(flow_run, message, client=None):
            self.events.append(f"crashed: {message}")

        monkeypatch.setattr(worker, "job_configuration", Configuration)
        monkeypatch.setattr(worker, "_emit_flow_run_submitted_event", lambda configuration: None)
        monkeypatch.setattr(worker, "_propose_submitting_state", propose_submitting)
        monkeypatch.setattr(worker, "_propose_crashed_state", propose_crashed)
        monkeypatch.setattr(worker, "run", run)
        self.flow_run = prefect.client.schemas.objects.FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="r")

    async def submit(self, tasks) -> int:
        """What Prefect's `_submit_run` does once the run is Pending; returns the process id."""
        self.worker._runs_task_group = tasks
        return await tasks.start(self.worker._submit_run_and_capture_errors, self.flow_run)


def test_a_run_starts_while_its_worker_labels_are_still_being_written(monkeypatch):
    """The label PATCH retried for a minute under SQLite contention held runs Pending with
    no process (bench/job_cpu.py): the process must not wait for it."""
    client = LabelsClient()
    submission = Submission(monkeypatch, client)

    async def scenario():
        async with anyio.create_task_group() as tasks:
            with anyio.fail_after(5):
                pid = await submission.submit(tasks)
            assert submission.events == ["submitting", "process started"] and client.labelled == []
            client.release.set()  # the PATCH goes through later: the labels are still written
        return pid

    assert asyncio.run(scenario()) == 4242
    [(flow_run_id, labels)] = client.labelled
    assert flow_run_id == submission.flow_run.id
    assert labels["prefect.worker.name"] == "labels-check" and labels["prefect.work-pool.name"] == "pool"


def test_a_failed_label_patch_is_a_warning_not_a_crashed_run(monkeypatch, caplog):
    error = prefect.exceptions.PrefectHTTPStatusError("503 Service Unavailable", request=None, response=None)
    submission = Submission(monkeypatch, LabelsClient(error=error))

    async def scenario():
        async with anyio.create_task_group() as tasks:
            return await submission.submit(tasks)

    assert asyncio.run(scenario()) == 4242
    assert submission.events == ["submitting", "process started"]
    assert "Could not label flow run" in caplog.text and "503 Service Unavailable" in caplog.text

