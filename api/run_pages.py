"""Status-filtered pages of flow runs, newest first: GET /jobs and GET /schedules/{id}/runs.

A query is one or more disjoint flow-run filters (a schedule's runs are two sets: those
its scheduler created and those started by hand) and the page is of their union. A
status becomes the Prefect state types it covers (`state_types_for`). `validating` and
`running` are both RUNNING in Prefect; only the run's compile task run tells them apart,
so for those two the candidates (at most RUNNING_SCAN_LIMIT per filter: running jobs are
bounded by the pool's slots, the limit is a guard) are read, classified and paginated
here. Every other page is cut by the server (one filter) or from the first
offset+limit runs of each set (a union); an offset past every run (BEYOND_EVERY_RUN,
however large) reads as an empty page with the true total.

Runs are the Prefect API's JSON; errors are the source's (see api/prefect_reads.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.sorting import FlowRunSort

from api.prefect_reads import Run
from api.status import JobStatus, run_status, state_types_for

RUNNING_SCAN_LIMIT = 2000
# Offsets at or past this are past every run any server holds: such a page is read as empty
# without asking Prefect, whose SQLite database fails on integers over 2**63.
BEYOND_EVERY_RUN = 10**12
NEWEST_FIRST = FlowRunSort.EXPECTED_START_TIME_DESC
# Statuses that share a Prefect state type and are told apart by task runs.
SPLIT_STATUSES = (JobStatus.running, JobStatus.validating)


class RunSource(Protocol):
    """Where pages are read from (the job gateway: runs of the optimization deployment)."""

    async def read_runs(
        self, run_filter: FlowRunFilter, sort: FlowRunSort, *, limit: int, offset: int = 0
    ) -> list[Run]: ...

    async def count_runs(self, run_filter: FlowRunFilter) -> int: ...

    async def compile_started(self, runs: Sequence[Run]) -> set[UUID]: ...


@dataclass(frozen=True)
class RunPage:
    runs: list[Run]
    compile_started: set[UUID]  # ids of the runs of the page that passed validation
    total: int  # runs matching the query, over all pages

    def statuses(self) -> list[JobStatus]:
        return [run_status(run, self.compile_started) for run in self.runs]


def ids_filter(run_ids: Collection[str]) -> FlowRunFilter:
    return FlowRunFilter(id=FlowRunFilterId(any_=[UUID(run_id) for run_id in run_ids]))


async def read_by_id(source: RunSource, run_ids: Collection[str]) -> dict[str, Run]:
    """The runs of `run_ids` the source still has, by id (one filter request)."""
    runs = await source.read_runs(ids_filter(run_ids), NEWEST_FIRST, limit=len(run_ids))
    return {str(run["id"]): run for run in runs}


def with_status(run_filter: FlowRunFilter, status: JobStatus | None) -> FlowRunFilter:
    """The filter narrowed to the state types of `status` (unchanged for no status)."""
    if status is None:
        return run_filter
    state = FlowRunFilterState(type=FlowRunFilterStateType(any_=state_types_for(status)))
    return run_filter.model_copy(update={"state": state})


def _start_key(run: Run) -> tuple[bool, dt.datetime | None]:
    value = run.get("expected_start_time")
    return (value is not None, dt.datetime.fromisoformat(value) if value else None)


def merge_newest_first(pages: Sequence[list[Run]]) -> list[Run]:
    """One list of the runs of several sets, newest expected start first (runs without
    one last). A single set is kept in the server's order."""
    if len(pages) == 1:
        return list(pages[0])
    return sorted((run for page in pages for run in page), key=_start_key, reverse=True)


def with_status_of(runs: list[Run], compile_started: set[UUID], status: JobStatus) -> list[Run]:
    return [run for run in runs if run_status(run, compile_started) is status]


async def page_of_runs(
    source: RunSource, candidates: list[Run], status: JobStatus | None, *, limit: int, offset: int
) -> RunPage:
    """Runs offset..offset+limit of `candidates` (the runs of the query's state types, newest
    first, e.g. from the list index) with `status`."""
    if status in SPLIT_STATUSES:
        started = await source.compile_started(candidates)
        wanted = with_status_of(candidates, started, status)
        return RunPage(wanted[offset : offset + limit], started, len(wanted))
    runs = candidates[offset : offset + limit]
    return RunPage(runs, await source.compile_started(runs), len(candidates))


async def read_page(
    source: RunSource, filters: Sequence[FlowRunFilter], status: JobStatus | None, *, limit: int, offset: int
) -> RunPage:
    """Runs offset..offset+limit of the union of `filters` with `status`, newest first."""
    filters = [with_status(f, status) for f in filters]
    if status in SPLIT_STATUSES:
        pages = await asyncio.gather(*(source.read_runs(f, NEWEST_FIRST, limit=RUNNING_SCAN_LIMIT) for f in filters))
        return await page_of_runs(source, merge_newest_first(pages), status, limit=limit, offset=offset)
    if offset >= BEYOND_EVERY_RUN:
        return RunPage([], set(), sum(await asyncio.gather(*(source.count_runs(f) for f in filters))))
    if len(filters) == 1:
        reads = [source.read_runs(filters[0], NEWEST_FIRST, limit=limit, offset=offset)]
        window = slice(None)
    else:  # the page of a union lies within the first offset+limit runs of each set
        reads = [source.read_runs(f, NEWEST_FIRST, limit=offset + limit) for f in filters]
        window = slice(offset, offset + limit)
    pages, counts = await asyncio.gather(
        asyncio.gather(*reads), asyncio.gather(*(source.count_runs(f) for f in filters))
    )
    runs = merge_newest_first(pages)[window]
    return RunPage(runs, await source.compile_started(runs), sum(counts))
