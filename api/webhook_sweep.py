"""Start deliveries whose trigger was lost: the durable twin of the delivery automation.

The automation (deployments/automations.py: `delivery_automation`) reacts to a job's
terminal state event, and events can be dropped (a Prefect server restart, a SQLite write
storm; see api/stuck_jobs.py). A delivery run can also die half way (its worker killed).
Every `stuck_job_sweep_seconds` this sweep reads the jobs tagged `contract.NOTIFY_TAG`
that ended within the last `webhook_give_up_seconds` and their delivery logs (one
Variable read for all of them), and starts the delivery flow for each end that

- has no log entry `GRACE_SECONDS` after it happened (the automation's run normally logs
  its first attempt within seconds), or
- was neither delivered nor given up, with no attempt for longer than the longest wait
  between two attempts plus one attempt's time plus `GRACE_SECONDS` (its run died).

The runs it creates carry an idempotency key per end and attempt count, so replicas
sweeping at once, or the next round, create one run, not several. A delivery run that
starts after another delivered the event does nothing (the log says delivered).

Which ends need a delivery is decided by `missed` (pure). Failures: a round that fails is
logged and the next round tries again; jobs ended longer ago than the window, or past the
first page of `PAGE_LIMIT` runs in one round, are not swept (the limit).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterable
from typing import Any

from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound

from api.gateway import DeploymentMissing, JobGateway
from api.prefect_reads import Run
from dspy_service.contract import NOTIFY_TAG, TERMINAL_STATE_TYPES, webhook_log_variable
from dspy_service.prefect_pages import PAGE_LIMIT
from dspy_service.settings import ServiceSettings
from dspy_service.webhooks import event_id

logger = logging.getLogger("dspy_service.api.webhook_sweep")
GRACE_SECONDS = 60.0


def _age(stamp: str | None, now: dt.datetime) -> float | None:
    return (now - dt.datetime.fromisoformat(stamp)).total_seconds() if stamp else None


def missed(
    runs: Iterable[Run], logs: dict[str, list[dict[str, Any]]], now: dt.datetime, settings: ServiceSettings
) -> list[tuple[str, str]]:
    """(job id, idempotency key) of each end that needs a delivery run (see the module
    docstring); `logs` maps job ids to their delivery logs."""
    stalled_after = settings.webhook_max_retry_seconds + settings.webhook_timeout_seconds + GRACE_SECONDS
    found = []
    for run in runs:
        state = run.get("state") or {}
        age = _age(state.get("timestamp"), now)
        if state.get("type") not in TERMINAL_STATE_TYPES or age is None or age < GRACE_SECONDS:
            continue
        if age > settings.webhook_give_up_seconds + GRACE_SECONDS:
            continue
        the_event = event_id(run["id"], state.get("id"))
        record = next((d for d in logs.get(run["id"], []) if d.get("event_id") == the_event), None)
        if record is None:
            found.append((run["id"], f"dspy-webhook-sweep-{the_event}-0"))
            continue
        attempts = record.get("attempts") or []
        last = _age(attempts[-1].get("at"), now) if attempts else None
        if record.get("delivered") or record.get("gave_up") or (last is not None and last < stalled_after):
            continue
        count = len(attempts) + int(record.get("attempts_dropped") or 0)
        found.append((run["id"], f"dspy-webhook-sweep-{the_event}-{count}"))
    return found


async def sweep_deliveries(gateway: JobGateway, now: dt.datetime | None = None) -> list[str]:
    """Start the deliveries `missed` finds; returns their job ids."""
    settings, client = gateway.settings, gateway.client
    now = now or dt.datetime.now(dt.UTC)
    since = now - dt.timedelta(seconds=settings.webhook_give_up_seconds + GRACE_SECONDS)
    run_filter = FlowRunFilter(
        tags=FlowRunFilterTags(all_=[NOTIFY_TAG]),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=sorted(TERMINAL_STATE_TYPES))),
        end_time=FlowRunFilterEndTime(after_=since),
    )
    runs = await gateway.read_runs(run_filter, FlowRunSort.END_TIME_DESC, limit=PAGE_LIMIT)
    if not runs:
        return []
    names = {webhook_log_variable(run["id"]): run["id"] for run in runs}
    body = {"variables": {"name": {"any_": sorted(names)}}, "limit": len(names)}
    variables = (await client.request("POST", "/variables/filter", json=body)).json()
    logs = {
        names[v["name"]]: (v.get("value") or {}).get("deliveries") or []
        for v in variables
        if v.get("name") in names and isinstance(v.get("value"), dict)
    }
    wanted = missed(runs, logs, now, settings)
    if not wanted:
        return []
    try:
        deployment = await client.read_deployment_by_name(settings.notify_deployment_full_name)
    except ObjectNotFound:
        logger.warning("webhook deliveries missed, but %s is not registered", settings.notify_deployment_full_name)
        return []
    for job_id, key in wanted:
        await client.create_flow_run_from_deployment(deployment.id, parameters={"job_id": job_id}, idempotency_key=key)
        logger.warning("job %s: its webhook delivery was not started or stalled; started one", job_id)
    return [job_id for job_id, _ in wanted]


async def sweep_deliveries_forever(gateway: JobGateway) -> None:
    """The API's background sweep; errors are logged and the next round tries again."""
    while True:
        await asyncio.sleep(gateway.settings.stuck_job_sweep_seconds)
        try:
            await sweep_deliveries(gateway)
        except DeploymentMissing:
            pass
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the Prefect server restarting, a timeout: try next round
            logger.warning("sweep of webhook deliveries failed (will retry): %s", exc)

