"""Reads of flow runs and logs as the Prefect API's JSON, in pages the API accepts.

The API works on one representation of a flow run: the JSON `POST /flow_runs/filter`
and `GET /flow_runs/{id}` return (`Run`, a mapping). These reads are
`PrefectClient.read_flow_runs`/`read_flow_run`/`read_logs` (same bodies, same client,
same retries) minus validating a `FlowRun` or `Log` model per item, which was a third
of GET /jobs?limit=50 (py-spy). The Prefect API answers a `limit` over 200 with 422, so
longer reads are made of several calls (`read_in_pages`).

Failures are the client's: transport errors and 5xx propagate (the API answers 503);
a missing run reads as None.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import httpx
import orjson
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    FlowRunFilter,
    LogFilter,
    LogFilterFlowRunId,
    LogFilterTimestamp,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
    TaskRunFilterName,
)
from prefect.client.schemas.sorting import FlowRunSort, LogSort, TaskRunSort

from dspy_service.prefect_pages import PAGE_LIMIT, read_in_pages

Run = Mapping[str, Any]  # a flow run as the Prefect API's JSON


async def read_run(client: PrefectClient, run_id: UUID) -> Run | None:
    """One flow run, or None when there is no such run."""
    try:
        response = await client.request("GET", "/flow_runs/{id}", path_params={"id": run_id})
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 404:
            return None
        raise
    return orjson.loads(response.content)


def filter_body(run_filter: FlowRunFilter | None, deployment_filter: DeploymentFilter | None) -> dict[str, Any]:
    """The filter part of a flow-run filter/count request, as PrefectClient sends it."""
    return {
        "flow_runs": run_filter.model_dump(mode="json", exclude_unset=True) if run_filter else None,
        "deployments": deployment_filter.model_dump(mode="json") if deployment_filter else None,
    }


async def filter_runs(
    client: PrefectClient,
    run_filter: FlowRunFilter | None,
    deployment_filter: DeploymentFilter | None,
    sort: FlowRunSort,
    *,
    limit: int,
    offset: int = 0,
) -> list[Run]:
    """Up to `limit` runs matching both filters, in `sort` order."""

    async def read_page(size: int, start: int) -> list[Run]:
        body = {**filter_body(run_filter, deployment_filter), "sort": sort, "limit": size, "offset": start}
        return orjson.loads((await client.request("POST", "/flow_runs/filter", json=body)).content)

    return await read_in_pages(read_page, limit=limit, offset=offset)


async def read_logs(client: PrefectClient, run_id: UUID) -> list[dict[str, Any]]:
    """All logs of a run, oldest first."""
    log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])).model_dump(mode="json")

    async def read_page(size: int, start: int) -> list[dict[str, Any]]:
        body = {"logs": log_filter, "limit": size, "offset": start, "sort": LogSort.TIMESTAMP_ASC}
        return orjson.loads((await client.request("POST", "/logs/filter", json=body)).content)

    return await read_in_pages(read_page, limit=None)


async def read_states(client: PrefectClient, run_id: UUID) -> list[dict[str, Any]]:
    """A flow run's state history, oldest first (Prefect orders it by the states' time)."""
    response = await client.request("GET", "/flow_run_states/", params={"flow_run_id": str(run_id)})
    return orjson.loads(response.content)


async def read_task_run_named(client: PrefectClient, run_id: UUID, name: str) -> dict[str, Any] | None:
    """The first task run called `name` of a flow run, as Prefect's JSON (None: none yet)."""
    task_filter = TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run_id]), name=TaskRunFilterName(any_=[name]))
    body = {
        "task_runs": task_filter.model_dump(mode="json", exclude_none=True),
        "limit": 1,
        "sort": TaskRunSort.EXPECTED_START_TIME_ASC,
    }
    response = await client.request("POST", "/task_runs/filter", json=body)
    found = orjson.loads(response.content)
    return found[0] if found else None


async def read_logs_since(client: PrefectClient, run_id: UUID, since: dt.datetime | None) -> list[dict[str, Any]]:
    """The logs of a run whose `timestamp` is at or after `since` (all when None), each
    once, by timestamp. Pages continue from the last timestamp read rather than by offset:
    Prefect sorts on the timestamp alone, so ties straddling an offset page boundary could
    be skipped; re-read ties are dropped by id. Only a page that is all one timestamp (200
    records in one microsecond, which no writer produces) steps on by offset, where
    PostgreSQL's order among ties may skip some."""
    found: dict[str, dict[str, Any]] = {}
    after = since.isoformat() if since else None
    skip = 0
    while True:
        log_filter = LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[run_id]),
            timestamp=LogFilterTimestamp(after_=dt.datetime.fromisoformat(after)) if after else None,
        )
        body = {
            "logs": log_filter.model_dump(mode="json", exclude_none=True),
            "limit": PAGE_LIMIT,
            "offset": skip,
            "sort": LogSort.TIMESTAMP_ASC,
        }
        page = orjson.loads((await client.request("POST", "/logs/filter", json=body)).content)
        for log in page:
            found.setdefault(log["id"], log)
        if len(page) < PAGE_LIMIT:
            return list(found.values())
        last = page[-1]["timestamp"]
        if after is not None and dt.datetime.fromisoformat(last) == dt.datetime.fromisoformat(after):
            skip += len(page)
        else:
            after, skip = last, 0
