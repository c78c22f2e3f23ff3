"""The pool's state for GET /queue and GET /health: jobs waiting and running, slots,
workers and whether one is alive. Errors are Prefect's (the routes answer them)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType, Worker, WorkerStatus

from api.gateway import JobGateway


async def queue_snapshot(gateway: JobGateway) -> dict[str, Any]:
    """GET /queue: jobs waiting for a slot and running, the pool's slots, its workers and
    whether this process's list index serves pages."""
    client, settings = gateway.client, gateway.settings
    deployment_filter = await gateway.deployment_filter()

    async def count(*types: StateType) -> int:
        state = FlowRunFilterState(type=FlowRunFilterStateType(any_=list(types)))
        # Runs a schedule created ahead of time are not waiting for a slot yet.
        due = FlowRunFilterExpectedStartTime(before_=dt.datetime.now(dt.UTC))
        run_filter = FlowRunFilter(state=state, expected_start_time=due)
        return await client.count_flow_runs(deployment_filter=deployment_filter, flow_run_filter=run_filter)

    pending, active, pool, workers = await asyncio.gather(
        count(StateType.SCHEDULED, StateType.PENDING),
        count(StateType.RUNNING, StateType.CANCELLING),
        client.read_work_pool(settings.work_pool),
        client.read_workers_for_work_pool(settings.work_pool),
    )
    online = [w for w in workers if worker_alive(w)]
    return {
        "pending_jobs": pending,
        "active_jobs": active,
        "worker_threads": pool.concurrency_limit or settings.job_slots,
        "workers_alive": bool(online),
        "workers": [
            {
                "name": w.name,
                "status": str(w.status.value if hasattr(w.status, "value") else w.status),
                "last_heartbeat_time": w.last_heartbeat_time.isoformat() if w.last_heartbeat_time else None,
            }
            for w in workers
        ],
        "work_pool": settings.work_pool,
        "pool_paused": bool(pool.is_paused),
        # Whether this API process cuts GET /jobs pages from its index now (api/run_index.py).
        "list_index": {"loaded": gateway.index.loaded, "serving": gateway.index.servable()},
    }


def worker_alive(worker: Worker, now: dt.datetime | None = None) -> bool:
    """Online and heard from within three heartbeats (the server's foreman is slower)."""
    if worker.status != WorkerStatus.ONLINE or worker.last_heartbeat_time is None:
        return False
    now = now or dt.datetime.now(dt.UTC)
    interval = worker.heartbeat_interval_seconds or 30
    return (now - worker.last_heartbeat_time).total_seconds() < 3 * interval
