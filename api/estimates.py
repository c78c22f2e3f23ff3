"""POST /run/estimate: what a POST /run body would cost, without running anything.

The body is validated exactly as POST /run validates it (the same model, `preflight`, the
owner rules and the credential check: a `credential` the owner does not have is the same
400 naming the field), then `dspy_service.estimate.estimate_job` answers from the
optimizer's arithmetic. Nothing is stored, no flow run is created, no LM is called and none
of the user's code runs (the signature is read from its AST).

Failures: HTTPException 403 for a foreign `username`; JobError (400, naming the field)
for everything POST /run rejects, for a job given by `dataset_source` (the API does not
read files) and for an optimizer or module the estimate has no arithmetic for;
RequestValidationError (422) for shapes.
"""

from __future__ import annotations

from typing import Any

from fastapi.concurrency import run_in_threadpool

from api.identity import Caller
from api.job_secrets import credential_blocks
from api.ownership import owned_request
from api.submission import validated
from dspy_service.estimate import estimate_job
from dspy_service.schemas import JobRequest
from dspy_service.secret_store import SecretStore


async def estimate_request(request: JobRequest, caller: Caller, secrets: SecretStore) -> dict[str, Any]:
    """The estimate of a POST /run body, as the caller's job."""
    request = owned_request(caller, request)
    spec = await validated(request)
    await credential_blocks(spec, secrets)  # whether the owner's block exists; its value is not read
    estimate = await run_in_threadpool(estimate_job, spec, request.dataset)
    return {
        "username": spec.username,
        "optimizer_name": spec.optimizer_name,
        "module_name": spec.module_name,
        **estimate.as_dict(),
        "ignored_fields": request.ignored_fields,
    }
