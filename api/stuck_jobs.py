"""End jobs that nobody is left to end: the durable twin of deployments/automations.py.

The automations react to state-change events. Prefect's default message broker keeps
events in the server's memory, and a message whose handling fails three times (a SQLite
server answering "database is locked" under load) goes to a dead-letter folder: around a
server restart or a write storm the Pending event of a job can be lost, and a job whose
worker died between taking it and starting it then stayed Pending forever (seen in the
fault-injection test). This sweep reads the states themselves, so it does not depend on
any event: every `stuck_job_sweep_seconds` it ends

- jobs Pending (taken by a worker, never started) for `stuck_pending_seconds`: Crashed;
- jobs Cancelling (cancel accepted, no worker confirmed it) for `zombie_after_seconds`:
  Cancelled.

Several API replicas may sweep at once: the proposals are ordinary (not forced) state
changes, so a run that moved on meanwhile is left alone by the server's rules or ends in
the same terminal state.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.states import Cancelled, Crashed

from api.gateway import DeploymentMissing, JobGateway
from dspy_service.contract import STUCK_CANCEL_MESSAGE, STUCK_PENDING_MESSAGE
from dspy_service.settings import ServiceSettings

logger = logging.getLogger("dspy_service.api.stuck_jobs")


async def sweep_stuck_jobs(
    client: PrefectClient, deployment_id: UUID, settings: ServiceSettings, now: dt.datetime | None = None
) -> list[UUID]:
    """End the deployment's runs stuck Pending or Cancelling; returns the ids it ended."""
    now = now or dt.datetime.now(dt.UTC)
    runs = await client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.CANCELLING]))
        ),
        limit=200,
    )
    ended = []
    for run in runs:
        if run.state is None or run.state.timestamp is None:
            continue
        age = (now - run.state.timestamp).total_seconds()
        if run.state.type is StateType.PENDING and age > settings.stuck_pending_seconds:
            state = Crashed(message=STUCK_PENDING_MESSAGE)
        elif run.state.type is StateType.CANCELLING and age > settings.zombie_after_seconds:
            state = Cancelled(message=STUCK_CANCEL_MESSAGE)
        else:
            continue
        result = await client.set_flow_run_state(run.id, state)
        if result.status is SetStateStatus.ACCEPT:
            logger.warning(
                "job %s was %s for %.0f s with nobody to end it: marked %s",
                run.id,
                run.state.name,
                age,
                state.type.value,
            )
            ended.append(run.id)
    return ended


async def sweep_forever(gateway: JobGateway) -> None:
    """The API's background sweep; errors are logged and the next round tries again."""
    while True:
        await asyncio.sleep(gateway.settings.stuck_job_sweep_seconds)
        try:
            await sweep_stuck_jobs(gateway.client, await gateway.deployment_id(), gateway.settings)
        except DeploymentMissing:
            pass  # nothing registered yet: no jobs either
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the Prefect server restarting, a timeout: try next round
            logger.warning("sweep of stuck jobs failed (will retry): %s", exc)
