"""Jobs on Prefect: every read and write the API makes goes through here.

A job is a flow run of the optimization deployment; its id is the flow-run id. Nothing
is stored besides Prefect's own records, the job's dataset and its persisted result.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import orjson
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
    LogFilter,
    LogFilterFlowRunId,
    TaskRunFilter,
    TaskRunFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType, Worker, WorkerStatus
from prefect.client.schemas.sorting import FlowRunSort, LogSort
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Cancelling

from api import views
from dspy_service.contract import SCHEDULE_ID, SERVICE_TAG, TERMINAL_STATE_TYPES, Stage, schedule_tag, user_tag
from dspy_service.schemas import DatasetRef, JobSpec
from dspy_service.settings import ServiceSettings
from dspy_service.status import JobStatus, job_status, state_types_for
from dspy_service.storage import delete_dataset

logger = logging.getLogger("dspy_service.api")

LOG_PAGE = 200  # the Prefect API's page size limit for logs
RUN_PAGE = 200  # ditto for flow runs: larger `limit`s are answered with 422
RUNNING_SCAN_LIMIT = 2000  # running jobs are bounded by the pool's slots; this is a guard
RESULT_CACHE_SIZE = 64
LOG_CACHE_SIZE = 256
JobLogs = tuple[list[dict[str, Any]], list[dict[str, Any]]]  # (log entries, progress events)


class DeploymentMissing(RuntimeError):
    """The optimization deployment is not registered (yet) on the Prefect server."""


class JobGateway:
    def __init__(self, client: PrefectClient, settings: ServiceSettings):
        self.client = client
        self.settings = settings
        self._deployment_id: UUID | None = None
        serialize = settings.serialize_run_creates
        if serialize is None:
            serialize = settings.uses_sqlite
        self._create_lock = asyncio.Lock() if serialize else None
        self._results: OrderedDict[UUID, dict[str, Any]] = OrderedDict()
        # Logs of runs that ended a while ago, by (flow-run id, state id); see job_logs.
        self._logs: OrderedDict[tuple[UUID, UUID], JobLogs] = OrderedDict()

    # -- deployment ---------------------------------------------------------------------
    async def deployment_id(self) -> UUID:
        if self._deployment_id is None:
            try:
                deployment = await self.client.read_deployment_by_name(self.settings.deployment_full_name)
            except ObjectNotFound:
                raise DeploymentMissing(
                    f"deployment {self.settings.deployment_full_name!r} is not registered on the Prefect "
                    "server; run `dspy-service up` or `python -m deployments.register`"
                ) from None
            self._deployment_id = deployment.id
        return self._deployment_id

    async def _runs_filter(self, **extra: Any) -> dict[str, Any]:
        deployment = DeploymentFilter(id=DeploymentFilterId(any_=[await self.deployment_id()]))
        return {"deployment_filter": deployment, **extra}

    # -- create -------------------------------------------------------------------------
    async def submit(
        self,
        spec: JobSpec,
        dataset_ref: DatasetRef | None,
        idempotency_key: str | None = None,
        schedule_id: str | None = None,
    ) -> FlowRun:
        parameters: dict[str, Any] = {"job": spec.wire()}
        if dataset_ref is not None:
            parameters["dataset_ref"] = dataset_ref.model_dump(mode="json")
        tags, labels = [SERVICE_TAG, user_tag(spec.username)], {}
        if schedule_id:  # a run of a schedule started by hand (POST /schedules/{id}/run)
            parameters["schedule_id"] = schedule_id
            tags.append(schedule_tag(schedule_id))
            labels[SCHEDULE_ID] = schedule_id
        deployment_id = await self.deployment_id()

        async def create() -> FlowRun:
            return await self.client.create_flow_run_from_deployment(
                deployment_id,
                parameters=parameters,
                name=f"{spec.username}-{spec.optimizer_name}-{spec.module_name}".lower()[:100],
                tags=tags,
                labels=labels or None,
                idempotency_key=idempotency_key,
            )

        if self._create_lock is None:
            flow_run = await create()
        else:
            async with self._create_lock:
                flow_run = await create()
        stored = (flow_run.parameters.get("dataset_ref") or {}).get("url")
        if idempotency_key and dataset_ref is not None and stored != dataset_ref.url:
            delete_dataset(dataset_ref.url)  # the key named an existing job: keep its data only
        return flow_run

    # -- read ---------------------------------------------------------------------------
    async def get(self, job_id: str) -> FlowRun | None:
        try:
            run_id = UUID(job_id)
        except ValueError:
            return None
        try:
            flow_run = await self.client.read_flow_run(run_id)
        except ObjectNotFound:
            return None
        if flow_run.deployment_id != await self.deployment_id():
            return None
        return flow_run

    async def compile_started(self, runs: list[FlowRun] | list[Mapping[str, Any]]) -> set[UUID]:
        """Which RUNNING runs have reached their compile task (validating -> running).
        `runs` are `FlowRun`s or the API's JSON of flow runs."""
        running = [
            r.id if isinstance(r, FlowRun) else UUID(r["id"])
            for r in runs
            if (r.state_type if isinstance(r, FlowRun) else views.state_type_of(r)) == StateType.RUNNING
        ]
        if not running:
            return set()
        task_runs = await self.client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=running)),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[Stage.COMPILE])),
        )
        return {t.flow_run_id for t in task_runs if t.flow_run_id}

    async def status_of(self, flow_run: FlowRun) -> JobStatus:
        started = await self.compile_started([flow_run])
        return job_status(flow_run.state_type, flow_run.id in started)

    async def list(
        self, *, status: JobStatus | None, username: str | None, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], set[UUID], int]:
        """A page of runs newest first (the API's JSON of them, see api/views.py), which of
        them passed validation, and the total."""
        run_filter = FlowRunFilter()
        if username:
            run_filter.tags = FlowRunFilterTags(all_=[user_tag(username)])
        if status is not None:
            run_filter.state = FlowRunFilterState(type=FlowRunFilterStateType(any_=state_types_for(status)))
        filters = await self._runs_filter(flow_run_filter=run_filter)
        sort = FlowRunSort.EXPECTED_START_TIME_DESC
        if status in (JobStatus.running, JobStatus.validating):
            # Both are RUNNING in Prefect; tell them apart by task runs, then paginate.
            runs = await self.read_runs(filters, sort, limit=RUNNING_SCAN_LIMIT, raw=True)
            started = await self.compile_started(runs)
            wanted = [r for r in runs if views.list_status(r, started) is status]
            return wanted[offset : offset + limit], started, len(wanted)
        runs, total = await asyncio.gather(
            self.read_runs(filters, sort, limit=limit, offset=offset, raw=True),
            self.client.count_flow_runs(**filters),
        )
        return runs, await self.compile_started(runs), total

    async def read_runs(
        self, filters: dict[str, Any], sort: FlowRunSort, *, limit: int, offset: int = 0, raw: bool = False
    ) -> list[Any]:
        """Up to `limit` runs, in pages: the Prefect API returns at most 200 per call.
        `raw`: the API's JSON of the runs (dicts), without validating `FlowRun` models."""
        runs: list[Any] = []
        while len(runs) < limit:
            size = min(RUN_PAGE, limit - len(runs))
            if raw:
                page = await self._read_runs_json(filters, sort, limit=size, offset=offset + len(runs))
            else:
                page = await self.client.read_flow_runs(**filters, sort=sort, limit=size, offset=offset + len(runs))
            runs.extend(page)
            if len(page) < size:
                break
        return runs

    async def _read_runs_json(
        self, filters: dict[str, Any], sort: FlowRunSort, *, limit: int, offset: int
    ) -> list[dict[str, Any]]:
        """`PrefectClient.read_flow_runs` (same body, same client, same retries) minus
        the `FlowRun` validation of every run, a third of GET /jobs?limit=50 (py-spy)."""
        unknown = set(filters) - {"flow_run_filter", "deployment_filter"}
        if unknown:
            raise ValueError(f"filters not supported by the raw read: {sorted(unknown)}")
        run_filter, deployment_filter = filters.get("flow_run_filter"), filters.get("deployment_filter")
        body = {
            "flow_runs": run_filter.model_dump(mode="json", exclude_unset=True) if run_filter else None,
            "deployments": deployment_filter.model_dump(mode="json") if deployment_filter else None,
            "sort": sort,
            "limit": limit,
            "offset": offset,
        }
        response = await self.client.request("POST", "/flow_runs/filter", json=body)
        return orjson.loads(response.content)

    async def logs(self, flow_run_id: UUID) -> list[dict[str, Any]]:
        """All logs of a run, oldest first, as the API's JSON (see views.split_logs)."""
        logs: list[dict[str, Any]] = []
        log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])).model_dump(mode="json")
        while True:
            body = {"logs": log_filter, "limit": LOG_PAGE, "offset": len(logs), "sort": LogSort.TIMESTAMP_ASC}
            page = orjson.loads((await self.client.request("POST", "/logs/filter", json=body)).content)
            logs.extend(page)
            if len(page) < LOG_PAGE:
                return logs

    async def job_logs(self, flow_run: FlowRun) -> JobLogs:
        """A job's (log entries, progress events). Cached once the run has been in its
        terminal state for `log_settle_seconds`: after that nothing writes its logs any
        more (its engine and supervisor are gone; the worker's last lines and the log
        shipper's last batch arrive within seconds of the end). Keyed by the state too,
        so a run that moves on (a retry from the Prefect UI) is read afresh; the flow run
        itself is still read on every request, so a deleted job 404s and a cancel shows."""
        state = flow_run.state
        settled = (
            state is not None
            and state.type in TERMINAL_STATE_TYPES
            and state.timestamp is not None
            and (dt.datetime.now(dt.UTC) - state.timestamp).total_seconds() >= self.settings.log_settle_seconds
        )
        key = (flow_run.id, state.id) if state is not None else None
        if settled and key in self._logs:
            self._logs.move_to_end(key)
            return self._logs[key]
        logs = views.split_logs(await self.logs(flow_run.id))
        if settled:
            self._logs[key] = logs
            if len(self._logs) > LOG_CACHE_SIZE:
                self._logs.popitem(last=False)
        return logs

    async def result(self, flow_run: FlowRun) -> dict[str, Any] | None:
        """The persisted flow result of a COMPLETED run (cached: results never change)."""
        if flow_run.state_type != StateType.COMPLETED or flow_run.state is None:
            return None
        cached = self._results.get(flow_run.id)
        if cached is not None:
            self._results.move_to_end(flow_run.id)
            return cached
        try:
            value = await flow_run.state.aresult(raise_on_failure=False)
        except Exception as exc:  # noqa: BLE001 - storage unreachable from this host, file gone...
            logger.warning("result of %s unreadable: %s", flow_run.id, exc)
            return None
        if not isinstance(value, dict):
            return None
        self._results[flow_run.id] = value
        if len(self._results) > RESULT_CACHE_SIZE:
            self._results.popitem(last=False)
        return value

    # -- write --------------------------------------------------------------------------
    async def cancel(self, flow_run: FlowRun) -> None:
        """Pending runs are cancelled outright; running ones go through Cancelling, after
        which the worker kills the job process and marks the run Cancelled."""
        if flow_run.state_type in (StateType.SCHEDULED, StateType.PENDING, StateType.PAUSED):
            state = Cancelled(message="cancelled by the user before it started")
        else:
            state = Cancelling(message="cancelled by the user")
        await self.client.set_flow_run_state(flow_run.id, state, force=True)

    async def delete(self, flow_run: FlowRun) -> None:
        """Delete the run and what it owns: artifacts, stored result and dataset. Its logs
        become unreachable at once and are removed by Prefect's orphan vacuum."""
        artifacts = await self.client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
        )
        for artifact in artifacts:
            await self.client.delete_artifact(artifact.id)
        await delete_result_file(flow_run)
        ref = (flow_run.parameters or {}).get("dataset_ref")
        # A schedule's rows are shared by all its runs; the schedule deletes them.
        if isinstance(ref, dict) and ref.get("url") and not (flow_run.parameters or {}).get("schedule_id"):
            delete_dataset(ref["url"])
        self._results.pop(flow_run.id, None)
        for key in [k for k in self._logs if k[0] == flow_run.id]:
            del self._logs[key]
        await self.client.delete_flow_run(flow_run.id)

    # -- pool and workers ---------------------------------------------------------------
    async def queue_snapshot(self) -> dict[str, Any]:
        filters = await self._runs_filter()

        async def count(*types: StateType) -> int:
            state = FlowRunFilterState(type=FlowRunFilterStateType(any_=list(types)))
            # Runs a schedule created ahead of time are not waiting for a slot yet.
            due = FlowRunFilterExpectedStartTime(before_=dt.datetime.now(dt.UTC))
            run_filter = FlowRunFilter(state=state, expected_start_time=due)
            return await self.client.count_flow_runs(**filters, flow_run_filter=run_filter)

        pending, active, pool, workers = await asyncio.gather(
            count(StateType.SCHEDULED, StateType.PENDING),
            count(StateType.RUNNING, StateType.CANCELLING),
            self.client.read_work_pool(self.settings.work_pool),
            self.client.read_workers_for_work_pool(self.settings.work_pool),
        )
        online = [w for w in workers if worker_alive(w)]
        return {
            "pending_jobs": pending,
            "active_jobs": active,
            "worker_threads": pool.concurrency_limit or self.settings.job_slots,
            "workers_alive": bool(online),
            "workers": [
                {
                    "name": w.name,
                    "status": str(w.status.value if hasattr(w.status, "value") else w.status),
                    "last_heartbeat_time": w.last_heartbeat_time.isoformat() if w.last_heartbeat_time else None,
                }
                for w in workers
            ],
            "work_pool": self.settings.work_pool,
            "pool_paused": bool(pool.is_paused),
        }


def worker_alive(worker: Worker, now: dt.datetime | None = None) -> bool:
    """Online and heard from within three heartbeats (the server's foreman is slower)."""
    if worker.status != WorkerStatus.ONLINE or worker.last_heartbeat_time is None:
        return False
    now = now or dt.datetime.now(dt.UTC)
    interval = worker.heartbeat_interval_seconds or 30
    return (now - worker.last_heartbeat_time).total_seconds() < 3 * interval


async def delete_result_file(flow_run: FlowRun) -> None:
    from prefect._internal.result_records import ResultRecordMetadata
    from prefect.filesystems import LocalFileSystem
    from prefect.results import get_default_result_storage, resolve_result_storage

    data = flow_run.state.data if flow_run.state else None
    if not isinstance(data, ResultRecordMetadata) or not data.storage_key:
        return
    try:
        storage = (
            await resolve_result_storage(data.storage_block_id)
            if data.storage_block_id
            else get_default_result_storage()
        )
        if isinstance(storage, LocalFileSystem):
            storage._resolve_path(data.storage_key).unlink(missing_ok=True)
        elif hasattr(storage, "filesystem"):
            path = storage._resolve_path(data.storage_key)
            if storage.filesystem.exists(path):
                storage.filesystem.rm(path)
    except Exception as exc:  # noqa: BLE001 - the run is deleted regardless; say what was left
        logger.warning("could not delete the stored result of %s: %s", flow_run.id, exc)
