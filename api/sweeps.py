"""Sweeps: one request, a grid of ordinary jobs (POST /sweeps, GET /sweeps[/{id}], cancel).

A sweep is Prefect's own: one parent flow run of the `dspy-sweep` flow (created and ended
by the API; no worker runs it) holding the owner, the cells' redacted parameters and the
budgets in its `sweep` parameter, and one task run per cell under which that cell's job
(a run of the optimization deployment, created by `Submission.submit_cell` exactly as
POST /run creates one) is nested, so the Prefect UI shows the children under the parent.
Children carry the sweep's tag and their cell index as a label; GET /jobs/{id} reads,
POST /jobs/{id}/cancel cancels them like any job. The sweep's status is derived from them
on every read; once they all ended, a read or the API's background loop
(`end_sweeps_forever`) moves the parent run to its end state.

Every cell is validated as POST /run validates (`validated`, the owner rules), all before
anything is created. Failures: 422 for shapes (a cell's field named `grid.<axis>[i]...`,
`base.<field>` or `budget.<limit>`), JobError 400 naming the field for a grid the service
will not run (sweep_grid.py) and for any cell POST /run would refuse, 403 for a foreign
`username`, 429 when the cells would exceed the owner's active-job quota. A Prefect error
while creating the children cancels those already created, fails the parent, propagates.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from prefect import flow, task
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType, FlowRunFilterTags
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.states import Cancelled, Completed, Failed, Running
from pydantic import ValidationError

from api import sweep_views
from api.gateway import JobGateway
from api.identity import Caller
from api.ownership import owned_request, run_owner
from api.prefect_reads import Run, filter_runs, read_run
from api.quotas import check_active_jobs
from api.run_pages import BEYOND_EVERY_RUN
from api.status import JobStatus, run_status, state_type_of
from api.submission import Submission, validated
from dspy_service.contract import (
    SWEEP_CELL_TASK,
    SWEEP_FLOW_NAME,
    SWEEP_TAG,
    TERMINAL_STATE_TYPES,
    sweep_tag,
    user_tag,
)
from dspy_service.errors import JobError
from dspy_service.schemas import JobRequest, JobSpec
from dspy_service.sweep_grid import Cell, SweepRequest, baseline_sources, budget_share, check_request, expand

logger = logging.getLogger("dspy_service.api")
END_STATES = {"success": Completed, "cancelled": Cancelled, "failed": Failed}
RUNNING_SWEEPS_READ = 200  # parents ended per round of the background loop


@flow(name=SWEEP_FLOW_NAME, persist_result=False)
def sweep_parent(sweep: dict[str, Any]) -> None:
    """Never runs: a sweep's parent flow run, created and ended by the API."""


@task(name=SWEEP_CELL_TASK, persist_result=False)
def sweep_cell(index: int) -> None:
    """Never runs: the task run in the parent that one cell's job is nested under."""


def cell_field(field: str, cell: Cell, shared_budget: bool) -> str:
    """A cell's field as the sweep's body names it."""
    head = re.split(r"[.\[]", field, maxsplit=1)[0]
    if head in cell.positions:
        return f"grid.{head}[{cell.positions[head]}]{field[len(head):]}"
    if head == "budget" and shared_budget:
        return field
    return f"base.{field}"


@contextmanager
def errors_named_for(cell: Cell, shared_budget: bool) -> Iterator[None]:
    """Re-raise a cell's 400 / 422 with its fields as the sweep's body names them."""
    try:
        yield
    except JobError as exc:
        field = cell_field(exc.field, cell, shared_budget) if exc.field else None
        raise JobError(f"cell {cell.index}: {exc.message}", field=field) from None
    except ValidationError as exc:
        errors = []
        for error in exc.errors(include_url=False, include_context=False):
            loc = ".".join(str(part) for part in error.get("loc", ())) or "body"
            errors.append({**error, "loc": tuple(cell_field(loc, cell, shared_budget).split("."))})
        raise RequestValidationError(errors) from None


def cell_bodies(request: SweepRequest, cells: list[Cell]) -> list[dict[str, Any]]:
    """Each cell's POST /run body: base, the cell's axis values, its budget share, and
    `evaluate_baseline: false` for a cell whose model's first cell scores the baseline.

    Every cell gets the same `seed` (the base's, or one drawn for the sweep), so every cell
    splits the data alike: their test metrics are comparable and one baseline serves all."""
    share = budget_share(request.budget, len(cells)) if request.budget else None
    seed = request.base.get("seed")
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    bodies = [{**request.base, **cell.parameters, "seed": seed} for cell in cells]
    for index, (body, source) in enumerate(zip(bodies, baseline_sources(bodies), strict=True)):
        if share is not None:
            body["budget"] = share.model_dump(exclude_none=True)
        if source != index:
            body["evaluate_baseline"] = False
    return bodies


class Sweeps:
    """Creates, reads and cancels sweeps on the job gateway."""

    def __init__(self, submission: Submission | None, gateway: JobGateway):
        self.submission = submission
        self.gateway = gateway
        self.client = gateway.client

    async def submit(self, request: SweepRequest, caller: Caller) -> dict[str, Any]:
        """POST /sweeps: every cell validated, then the parent and one job per cell."""
        check_request(request)
        cells = expand(request.grid, self.gateway.settings.max_sweep_cells)
        bodies = cell_bodies(request, cells)
        checked: list[tuple[JobRequest, JobSpec]] = []
        for cell, body in zip(cells, bodies, strict=True):
            with errors_named_for(cell, request.budget is not None):
                job = owned_request(caller, JobRequest.model_validate(body))
                checked.append((job, await self.submission.with_defaults(job, await validated(job))))
        owner = checked[0][1].username
        await check_active_jobs(self.gateway, caller, owner, adding=len(cells))
        sources = baseline_sources(bodies)
        meta = {
            "username": owner,
            "name": request.base.get("name"),
            "budget": request.budget.model_dump(exclude_none=True) if request.budget else None,
            "cell_budget": bodies[0].get("budget"),
            "cells": [
                {"index": c.index, "parameters": sweep_views.public_parameters(c.parameters), "baseline_cell": s}
                for c, s in zip(cells, sources, strict=True)
            ],
        }
        parent = await self.client.create_flow_run(
            sweep_parent, name=f"{owner}-sweep-{len(cells)}-cells"[:100], parameters={"sweep": meta},
            tags=[SWEEP_TAG, user_tag(owner)], state=Running(message=f"a sweep of {len(cells)} jobs"),
        )
        created: list[Run] = []
        try:
            for cell, (job, spec) in zip(cells, checked, strict=True):
                task_run = await self.client.create_task_run(
                    sweep_cell, parent.id, dynamic_key=str(cell.index), name=f"cell-{cell.index}",
                    state=Completed(message="its job is the nested flow run"),
                )
                created.append(await self.submission.submit_cell(
                    job, spec, sweep_id=str(parent.id), cell=cell.index, parent_task_run_id=task_run.id
                ))
        except BaseException:
            for run in created:
                await self.gateway.cancel(run)
            await self.client.set_flow_run_state(parent.id, Failed(message="creating its jobs failed"), force=True)
            raise
        return await self.view(await self.get(str(parent.id), caller))

    async def get(self, sweep_id: str, caller: Caller) -> Run:
        """The caller's sweep (an admin's: anyone's); 404 otherwise."""
        try:
            run = await read_run(self.client, UUID(sweep_id))
        except ValueError:
            run = None
        if run is None or SWEEP_TAG not in (run.get("tags") or []) or not caller.owns(run_owner(run)):
            raise HTTPException(status_code=404, detail=f"sweep {sweep_id} not found")
        return run

    async def children(self, parent: Run) -> dict[int, tuple[Run, JobStatus]]:
        """The sweep's jobs by cell index."""
        cells = len(sweep_views.sweep_meta(parent).get("cells") or []) or 1
        run_filter = FlowRunFilter(tags=FlowRunFilterTags(all_=[sweep_tag(parent["id"])]))
        runs = await self.gateway.read_runs(run_filter, FlowRunSort.EXPECTED_START_TIME_ASC, limit=cells)
        started = await self.gateway.compile_started(runs)
        return sweep_views.children_by_cell(runs, [run_status(run, started) for run in runs])

    async def view(self, parent: Run) -> dict[str, Any]:
        """The sweep with its leaderboard; the parent run ends once every cell has."""
        body = sweep_views.sweep(parent, await self.children(parent))
        end = END_STATES.get(body["status"])
        state_type = state_type_of(parent)
        if end is not None and (state_type is None or state_type.value not in TERMINAL_STATE_TYPES):
            await self.client.set_flow_run_state(UUID(parent["id"]), end(message="every cell ended"), force=True)
        return body

    async def cancel(self, parent: Run) -> dict[str, Any]:
        """POST /sweeps/{id}/cancel: cancel every cell still pending or running; 409 when none is."""
        active = [run for run, status in (await self.children(parent)).values() if status.active]
        if not active:
            raise HTTPException(status_code=409, detail="every cell of this sweep has ended already")
        for run in active:
            await self.gateway.cancel(run)
        return await self.view(parent)

    async def list(self, owner: str | None, limit: int, offset: int) -> dict[str, Any]:
        """GET /sweeps: a page of sweeps newest first, each with its leaderboard."""
        if offset >= BEYOND_EVERY_RUN:  # Prefect's SQLite fails on offsets over 2**63
            return {"items": [], "limit": limit, "offset": offset}
        tags = [SWEEP_TAG, user_tag(owner)] if owner else [SWEEP_TAG]
        run_filter = FlowRunFilter(tags=FlowRunFilterTags(all_=tags))
        parents = await filter_runs(self.client, run_filter, None, FlowRunSort.EXPECTED_START_TIME_DESC, limit=limit,
                                    offset=offset)
        return {"items": [await self.view(p) for p in parents], "limit": limit, "offset": offset}


async def end_finished_sweeps(gateway: JobGateway) -> None:
    """Move the parent run of every sweep whose cells all ended to its end state (a read of
    the sweep does the same), so the Prefect UI shows it ended though nobody read it."""
    state = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))
    run_filter = FlowRunFilter(tags=FlowRunFilterTags(all_=[SWEEP_TAG]), state=state)
    sweeps = Sweeps(None, gateway)
    for parent in await filter_runs(
        gateway.client, run_filter, None, FlowRunSort.EXPECTED_START_TIME_ASC, limit=RUNNING_SWEEPS_READ
    ):
        await sweeps.view(parent)


async def end_sweeps_forever(gateway: JobGateway) -> None:
    """The API's background loop for sweeps (every DSPY_SERVICE_STUCK_JOB_SWEEP_SECONDS);
    errors are logged and the next round tries again."""
    while True:
        await asyncio.sleep(gateway.settings.stuck_job_sweep_seconds)
        try:
            await end_finished_sweeps(gateway)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the Prefect server restarting, a timeout: try next round
            logger.warning("ending finished sweeps failed (will retry): %s", exc)
