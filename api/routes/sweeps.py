"""POST /sweeps and the /sweeps endpoints: a grid of ordinary jobs and its leaderboard (api/sweeps.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from api.deps import GatewayDep, SubmissionDep
from api.identity import CurrentUser
from api.ownership import listed_username
from api.sweeps import Sweeps
from dspy_service.sweep_grid import SweepRequest

router = APIRouter()


async def get_sweeps(submission: SubmissionDep, gateway: GatewayDep) -> Sweeps:
    return Sweeps(submission, gateway)


SweepsDep = Annotated[Sweeps, Depends(get_sweeps)]


@router.post("/sweeps", status_code=201)
async def submit_sweep(request: SweepRequest, sweeps: SweepsDep, caller: CurrentUser):
    """One job per grid cell, each validated like POST /run, under one parent flow run."""
    return await sweeps.submit(request, caller)


@router.get("/sweeps")
async def list_sweeps(
    sweeps: SweepsDep,
    caller: CurrentUser,
    username: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
):
    """The caller's sweeps newest first (an admin's: everyone's, `username` filters)."""
    return await sweeps.list(listed_username(caller, username), limit, offset)


@router.get("/sweeps/{sweep_id}")
async def get_sweep(sweep_id: str, sweeps: SweepsDep, caller: CurrentUser):
    """The sweep's status and leaderboard."""
    return await sweeps.view(await sweeps.get(sweep_id, caller))


@router.post("/sweeps/{sweep_id}/cancel")
async def cancel_sweep(sweep_id: str, sweeps: SweepsDep, caller: CurrentUser):
    """Cancel every cell still pending or running."""
    return await sweeps.cancel(await sweeps.get(sweep_id, caller))
