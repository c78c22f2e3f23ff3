"""End jobs that nobody is left to end: the durable twin of deployments/automations.py.

The automations react to state-change events. Prefect's default message broker keeps
events in the server's memory, and a message whose handling fails three times (a SQLite
server answering "database is locked" under load) goes to a dead-letter folder: around a
server restart or a write storm the Pending event of a job can be lost, and a job whose
worker died between taking it and starting it would stay Pending forever. This sweep
reads the states themselves, so it does not depend on any event: every `stuck_job_sweep_seconds` it ends

- jobs Pending (taken by a worker, never started) for `stuck_pending_seconds`: Crashed;
- jobs Cancelling (cancel accepted, no worker confirmed it) for `zombie_after_seconds`:
  Cancelled.

Several API replicas may sweep at once: the proposals are ordinary (not forced) state
changes, so a run that moved on meanwhile is left alone by the server's rules or ends in
the same terminal state.

Which runs are stuck is decided by `stuck_runs` (pure: the stored runs, now and the
settings). A failed round is logged and the next round tries again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import State, StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.client.schemas.sorting import FlowRunSort
from prefect.states import Cancelled, Crashed

from api.gateway import DeploymentMissing, JobGateway
from api.prefect_reads import Run, filter_runs
from dspy_service.contract import STUCK_CANCEL_MESSAGE, STUCK_PENDING_MESSAGE
from dspy_service.prefect_pages import PAGE_LIMIT
from dspy_service.settings import ServiceSettings

logger = logging.getLogger("dspy_service.api.stuck_jobs")

SWEPT_STATE_TYPES = (StateType.PENDING, StateType.CANCELLING)


@dataclass(frozen=True)
class StuckRun:
    run_id: UUID
    state_name: str  # the state it is stuck in
    age_seconds: float  # time since it entered that state
    end_state: State  # the state that ends it


def stuck_runs(runs: Iterable[Run], now: dt.datetime, settings: ServiceSettings) -> list[StuckRun]:
    """The runs (the Prefect API's JSON) stuck past their threshold, with how to end each:
    Pending longer than `stuck_pending_seconds` -> Crashed; Cancelling longer than
    `zombie_after_seconds` -> Cancelled. Runs in any other state, or without a state
    timestamp, are left alone."""
    stuck = []
    for run in runs:
        state = run.get("state") or {}
        if not state.get("timestamp"):
            continue
        age = (now - dt.datetime.fromisoformat(state["timestamp"])).total_seconds()
        if state.get("type") == StateType.PENDING.value and age > settings.stuck_pending_seconds:
            end = Crashed(message=STUCK_PENDING_MESSAGE)
        elif state.get("type") == StateType.CANCELLING.value and age > settings.zombie_after_seconds:
            end = Cancelled(message=STUCK_CANCEL_MESSAGE)
        else:
            continue
        stuck.append(StuckRun(UUID(run["id"]), state.get("name") or state["type"], age, end))
    return stuck


async def sweep_stuck_jobs(
    client: PrefectClient,
    deployment_id: UUID | list[UUID],
    settings: ServiceSettings,
    now: dt.datetime | None = None,
) -> list[UUID]:
    """End the deployment's (or deployments') runs stuck Pending or Cancelling; returns the ids it ended."""
    now = now or dt.datetime.now(dt.UTC)
    deployment_ids = deployment_id if isinstance(deployment_id, list) else [deployment_id]
    runs = await filter_runs(
        client,
        FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(SWEPT_STATE_TYPES)))),
        DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids)),
        FlowRunSort.EXPECTED_START_TIME_ASC,
        limit=PAGE_LIMIT,
    )
    ended = []
    for stuck in stuck_runs(runs, now, settings):
        result = await client.set_flow_run_state(stuck.run_id, stuck.end_state)
        if result.status is SetStateStatus.ACCEPT:
            logger.warning(
                "job %s was %s for %.0f s with nobody to end it: marked %s",
                stuck.run_id,
                stuck.state_name,
                stuck.age_seconds,
                stuck.end_state.type.value,
            )
            ended.append(stuck.run_id)
    return ended


async def sweep_forever(gateway: JobGateway) -> None:
    """The API's background sweep; errors are logged and the next round tries again."""
    while True:
        await asyncio.sleep(gateway.settings.stuck_job_sweep_seconds)
        try:
            await sweep_stuck_jobs(gateway.client, await gateway.job_deployment_ids(), gateway.settings)
        except DeploymentMissing:
            pass  # nothing registered yet: no jobs either
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the Prefect server restarting, a timeout: try next round
            logger.warning("sweep of stuck jobs failed (will retry): %s", exc)
