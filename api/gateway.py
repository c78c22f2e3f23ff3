"""Jobs on Prefect: every read and write the API makes of a job goes through here.

A job is a flow run of one of the job deployments (`settings.job_deployment_names`: the
optimization deployment and the batch prediction one); its id is the flow-run id. Nothing
is stored besides Prefect's own records, the job's dataset and its persisted result.
Runs come and go as the Prefect API's JSON (`Run`, see api/prefect_reads.py).

Failures: DeploymentMissing when the deployment is not registered (the API answers 503);
Prefect's transport and HTTP errors propagate; `result` raises UnreadableResult for a
result that is not JSON or cannot be read (see dspy_service/result_files.py), and
`outcome` makes that job failed ("unreadable result: <why>"): GET /jobs/{id},
/jobs/{id}/summary, /jobs/{id}/artifact (404, no artifact) and /schedules/{id}/champion
show it so; lists (GET /jobs, a schedule's runs) read no results and show it as success.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterTags,
    TaskRunFilter,
    TaskRunFilterName,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelling

from api import views
from api.job_secrets import inline_block_of
from api.kept_programs import delete_kept_program, read_kept_program
from api.page_cache import PageCache
from api.prefect_reads import Run, filter_runs, read_logs, read_logs_since, read_run, read_states, read_task_run_named
from api.run_cache import RunCache
from api.run_index import RunIndex
from api.run_index_sync import ListIndex
from api.run_pages import RunPage, page_of_runs, read_page
from api.status import JobStatus, run_status, state_type_of, state_types_for
from dspy_service.contract import NOTIFY_TAG, TERMINAL_STATE_TYPES, WORK_STAGES, user_tag
from dspy_service.result_files import UnreadableResult, delete_result_file, read_json_result
from dspy_service.secret_store import SecretStore
from dspy_service.settings import ServiceSettings
from dspy_service.storage import delete_dataset
from dspy_service.webhook_store import WebhookStore

logger = logging.getLogger("dspy_service.api")

RESULT_CACHE_SIZE = 64
LOG_CACHE_SIZE = 256
COMPILE_MARKS = 2048  # Running states known to have reached their work task (compile_started)
JobLogs = tuple[list[dict[str, Any]], list[dict[str, Any]]]  # (log entries, progress events)
# States that end a run without a result of its own: what it kept once compiled is its artifact.
KEPT_PROGRAM_STATES = frozenset({StateType.FAILED, StateType.CRASHED, StateType.CANCELLING, StateType.CANCELLED})


@dataclass(frozen=True)
class Outcome:
    """What a job came to as far as the API can tell: `message`, when set, overrides the
    run state's message (a result the API refused)."""

    status: JobStatus
    result: dict[str, Any] | None = None
    message: str | None = None


class DeploymentMissing(RuntimeError):
    """A job deployment is not registered (yet) on the Prefect server."""


class JobGateway:
    def __init__(self, client: PrefectClient, settings: ServiceSettings):
        self.client = client
        self.settings = settings
        self._deployment_ids: dict[str, UUID] = {}
        serialize = settings.uses_sqlite if settings.serialize_run_creates is None else settings.serialize_run_creates
        self._create_lock = asyncio.Lock() if serialize else None
        self._results: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._logs: OrderedDict[tuple[str, str], JobLogs] = OrderedDict()  # (run, state) ids -> settled logs
        self._compiling: OrderedDict[tuple[str, str | None], None] = OrderedDict()  # (run, Running state) ids
        # The read model (api/run_events.py) and the GET /jobs pages it vouches for; our writes drop their run.
        self.run_cache = RunCache(settings.read_model_size, settings.read_model_max_age_seconds)
        self.pages = PageCache(self.run_cache)
        self.index = RunIndex(
            settings.list_index_max_runs, settings.read_model_max_age_seconds, settings.log_settle_seconds
        )
        self.list_index = ListIndex(self, self.index)

    # -- deployment ---------------------------------------------------------------------
    async def deployment_id(self, full_name: str | None = None) -> UUID:
        """The id of a job deployment (default: the optimization deployment)."""
        full_name = full_name or self.settings.deployment_full_name
        if full_name not in self._deployment_ids:
            try:
                deployment = await self.client.read_deployment_by_name(full_name)
            except ObjectNotFound:
                raise DeploymentMissing(
                    f"deployment {full_name!r} is not registered on the Prefect "
                    "server; run `dspy-service up` or `python -m deployments.register`"
                ) from None
            self._deployment_ids[full_name] = deployment.id
        return self._deployment_ids[full_name]

    async def job_deployment_ids(self) -> list[UUID]:
        """The ids of every job deployment (settings.job_deployment_names)."""
        return [await self.deployment_id(name) for name in self.settings.job_deployment_names]

    async def deployment_filter(self) -> DeploymentFilter:
        return DeploymentFilter(id=DeploymentFilterId(any_=await self.job_deployment_ids()))

    # -- create -------------------------------------------------------------------------
    async def create_run(
        self,
        parameters: dict[str, Any],
        *,
        name: str,
        tags: list[str],
        labels: dict[str, Any] | None,
        idempotency_key: str | None,
        deployment: str | None = None,
        parent_task_run_id: UUID | None = None,
    ) -> Run:
        """A new run of the job deployment `deployment` (full name; default: optimization),
        or the run `idempotency_key` named already; `parent_task_run_id` nests it under that
        task run's flow run (a sweep's cell) in the Prefect UI."""
        deployment_id = await self.deployment_id(deployment)

        async def create() -> Run:
            flow_run = await self.client.create_flow_run_from_deployment(
                deployment_id,
                parameters=parameters,
                name=name,
                tags=tags,
                labels=labels,
                idempotency_key=idempotency_key,
                parent_task_run_id=parent_task_run_id,
            )
            self._changed(str(flow_run.id))  # this replica's lists show it at once
            return flow_run.model_dump(mode="json")

        if self._create_lock is None:
            return await create()
        async with self._create_lock:
            return await create()

    # -- read ---------------------------------------------------------------------------
    async def get(self, job_id: str) -> Run | None:
        try:
            run_id = UUID(job_id)
        except ValueError:
            return None
        run = await read_run(self.client, run_id)
        if run is None or run.get("deployment_id") not in {str(i) for i in await self.job_deployment_ids()}:
            return None
        return run

    async def read_runs(
        self, run_filter: FlowRunFilter | None, sort: FlowRunSort, *, limit: int, offset: int = 0
    ) -> list[Run]:
        """Up to `limit` of the deployment's runs matching `run_filter`."""
        return await filter_runs(
            self.client, run_filter, await self.deployment_filter(), sort, limit=limit, offset=offset
        )

    async def count_runs(self, run_filter: FlowRunFilter | None) -> int:
        return await self.client.count_flow_runs(
            flow_run_filter=run_filter, deployment_filter=await self.deployment_filter()
        )

    async def compile_started(self, runs: Sequence[Run]) -> set[UUID]:
        """Which RUNNING runs have reached their work task (compile, or a batch's predict:
        validating -> running). Remembered per Running state: within one, the task run stays;
        a retry is a new state and is asked afresh."""
        running = {UUID(run["id"]): (run["id"], run.get("state_id")) for run in runs
                   if state_type_of(run) is StateType.RUNNING}
        known = {run_id for run_id, key in running.items() if key in self._compiling}
        if len(known) == len(running):
            return known
        task_runs = await self.client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[i for i in running if i not in known])),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=list(WORK_STAGES))),
        )
        found = {t.flow_run_id for t in task_runs if t.flow_run_id in running}
        for run_id in found:
            if running[run_id][1] is not None:
                self._compiling[running[run_id]] = None
        while len(self._compiling) > COMPILE_MARKS:
            self._compiling.popitem(last=False)
        return known | found

    async def status_of(self, run: Run) -> JobStatus:
        return run_status(run, await self.compile_started([run]))

    async def list(self, *, status: JobStatus | None, username: str | None, limit: int, offset: int) -> RunPage:
        """A page of the deployment's runs newest first (GET /jobs): from the list index
        (api/run_index.py) when it is current, else read and kept a moment (api/page_cache.py)."""
        owner = user_tag(username) if username else None
        types = [t.value for t in state_types_for(status)] if status else None
        if (indexed := await self.list_index.runs(owner, types)) is not None:
            return await page_of_runs(self, indexed, status, limit=limit, offset=offset)
        key = (status, username, limit, offset)
        if (page := self.pages.fresh(key)) is None:
            token = self.run_cache.token()
            owned = FlowRunFilter(tags=FlowRunFilterTags(all_=[user_tag(username)])) if username else FlowRunFilter()
            page = await read_page(self, [owned], status, limit=limit, offset=offset)
            self.pages.store(key, page, token)
        return page

    async def job_logs(self, run: Run) -> JobLogs:
        """A job's (log entries, progress events). Cached once the run has been in its
        terminal state for `log_settle_seconds`: after that nothing writes its logs any
        more (its engine and supervisor are gone; the worker's last lines and the log
        shipper's last batch arrive within seconds of the end). Keyed by the state too,
        so a run that moves on (a retry from the Prefect UI) is read afresh; the flow run
        itself is still read on every request, so a deleted job 404s and a cancel shows."""
        state = run.get("state") or {}
        stamp = state.get("timestamp")
        settled = (
            state.get("type") in TERMINAL_STATE_TYPES
            and stamp is not None
            and (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(stamp)).total_seconds()
            >= self.settings.log_settle_seconds
        )
        key = (run["id"], state.get("id"))
        if settled and key in self._logs:
            self._logs.move_to_end(key)
            return self._logs[key]
        logs = views.split_logs(await self.logs(UUID(run["id"])))
        if settled:
            self._logs[key] = logs
            if len(self._logs) > LOG_CACHE_SIZE:
                self._logs.popitem(last=False)
        return logs

    async def logs(self, run_id: UUID) -> list[dict[str, Any]]:
        """All logs of a run, oldest first, as the API's JSON (see views.split_logs)."""
        return await read_logs(self.client, run_id)

    async def logs_since(self, run_id: UUID, since: dt.datetime | None) -> list[dict[str, Any]]:
        """The run's logs written (`timestamp`) at or after `since`, as Prefect's JSON."""
        return await read_logs_since(self.client, run_id, since)

    async def compile_task(self, run_id: UUID) -> dict[str, Any] | None:
        """The run's work task run (compile, or a batch's predict; its start makes a validating
        job running), or None."""
        for name in WORK_STAGES:
            task = await read_task_run_named(self.client, run_id, name)
            if task is not None:
                return task
        return None

    async def states(self, run_id: UUID) -> list[dict[str, Any]]:
        """The run's state history, oldest first, as Prefect's JSON."""
        return await read_states(self.client, run_id)

    async def result(self, run: Run) -> dict[str, Any] | None:
        """The stored result of a COMPLETED run, read as JSON only (see dspy_service/result_files.py);
        cached, since results never change. Raises UnreadableResult."""
        if state_type_of(run) is not StateType.COMPLETED or not run.get("state"):
            return None
        cached = self._results.get(run["id"])
        if cached is not None:
            self._results.move_to_end(run["id"])
            return cached
        value = await read_json_result(run)
        if value is None:
            return None
        self._results[run["id"]] = value
        if len(self._results) > RESULT_CACHE_SIZE:
            self._results.popitem(last=False)
        return value

    async def kept_result(self, run: Run) -> dict[str, Any] | None:
        """What a failed or cancelled run kept of its work (the compiled program, the metrics
        that exist), read as JSON only; None when it kept nothing. A FAILED run's own result
        (flows/optimize.py `ProgramKept`) first, else what the job wrote once compiled
        (api/kept_programs.py): a cancel, the time limit or a kill ended it without a result."""
        state_type = state_type_of(run)
        if state_type is StateType.FAILED and (run.get("state") or {}).get("data"):
            try:
                value = await read_json_result(run)
            except UnreadableResult as exc:
                logger.info("no kept result for failed run %s: %s", run["id"], exc)
                value = None
            if isinstance(value, dict) and value.get("program_artifact"):
                return value
        if state_type in KEPT_PROGRAM_STATES:
            return await read_kept_program(run["id"])
        return None

    async def outcome(self, run: Run) -> Outcome:
        """A run's status with its result: a COMPLETED run whose result the API refuses or
        cannot read is failed, with the message "unreadable result: <why>"."""
        status = await self.status_of(run)
        try:
            return Outcome(status, await self.result(run))
        except UnreadableResult as exc:
            logger.warning("result of %s refused: %s", run["id"], exc)
            return Outcome(JobStatus.failed, None, f"unreadable result: {exc}")

    # -- write --------------------------------------------------------------------------
    async def cancel(self, run: Run) -> bool:
        """Propose Cancelling, never forced (False: Prefect refused, the run ended meanwhile).
        Prefect decides on the state at that instant, so a cancel cannot race the job's start
        (Prefect lets a Cancelled run go to Running, never a Cancelling one): a run with no
        process yet becomes Cancelled at once; else its worker stops it or marks it Cancelled."""
        if state_type_of(run) in (StateType.SCHEDULED, StateType.PENDING, StateType.PAUSED):
            await self.tag_for_notification(run)  # it may end before its supervisor would tag it
        result = await self.client.set_flow_run_state(UUID(run["id"]), Cancelling(message="cancelled by the user"))
        self._changed(run["id"])
        return result.status is not SetStateStatus.ABORT

    async def tag_for_notification(self, run: Run) -> None:
        """A run Prefect's scheduler created gets its notify tag when it starts
        (deployments/runtime/supervisor.py); one that ends before that gets it here, so
        that its end is delivered too (deployments/automations.py)."""
        tags = list(run.get("tags") or [])
        job = (run.get("parameters") or {}).get("job")
        if NOTIFY_TAG not in tags and isinstance(job, dict) and job.get("notify_url"):
            await self.client.update_flow_run(UUID(run["id"]), tags=[*tags, NOTIFY_TAG])
            self._changed(run["id"])

    async def delete(self, run: Run) -> None:
        """Delete the run and what it owns: artifacts, stored result, dataset, inline secrets and webhook log. Its logs
        become unreachable at once and are removed by Prefect's orphan vacuum."""
        run_id = UUID(run["id"])
        artifacts = await self.client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
        for artifact in artifacts:
            await self.client.delete_artifact(artifact.id)
        await delete_kept_program(run["id"])
        await delete_result_file(run)
        parameters = run.get("parameters") or {}
        ref = parameters.get("dataset_ref")
        # A schedule's rows and inline secrets are shared by all its runs; the schedule deletes them.
        if not parameters.get("schedule_id"):
            for stored in (ref, parameters.get("program_ref")):  # a batch job's program copy too
                if isinstance(stored, dict) and stored.get("url"):
                    delete_dataset(stored["url"])
            block = inline_block_of(parameters)
            if block:
                await SecretStore(self.client).delete(block)
        await WebhookStore(self.client).delete_log(run["id"])
        self._results.pop(run["id"], None)
        for key in [k for k in self._logs if k[0] == run["id"]]:
            del self._logs[key]
        await self.client.delete_flow_run(run_id)
        self.run_cache.forget(run["id"])
        self.index.remove(run["id"])

    def _changed(self, run_id: str) -> None:
        """This process wrote the run: its next read, and the next page, ask Prefect."""
        self.run_cache.forget(run_id)
        self.index.forget(run_id)
