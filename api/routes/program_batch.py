"""POST /programs/{name}/batch: a batch prediction job over one registered program version."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel

from api.batch_submission import submit_batch
from api.deps import GatewayDep, SecretStoreDep
from api.identity import CurrentUser
from dspy_service.batch_spec import BatchRequest
from dspy_service.contract import PROGRAM_NAME_PATTERN

router = APIRouter()

ProgramName = Annotated[str, Path(pattern=PROGRAM_NAME_PATTERN, description="A program of yours.")]


class BatchProgram(BaseModel):
    name: str
    version: int


class BatchSubmitted(BaseModel):
    """The new batch job, as POST /run answers a new job (plus its program version)."""

    job_id: str
    status: str
    created_at: str | None
    username: str | None
    kind: str = "batch"
    program: BatchProgram
    dataset_rows: int | None = None  # None for a dataset_source (read by the job)


@router.post("/programs/{name}/batch", status_code=201, response_model=BatchSubmitted)
async def batch_predict(
    name: ProgramName, request: BatchRequest, gateway: GatewayDep, secrets: SecretStoreDep, caller: CurrentUser
) -> dict[str, Any]:
    """Predict every row with a version of your program (`version`, `alias`, default `latest`)
    as a job: follow it at GET /jobs/{job_id}; its results (JSONL, one line per row) at
    GET /jobs/{job_id}/artifact."""
    return await submit_batch(gateway, secrets, caller, name, request)
