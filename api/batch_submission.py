"""Submitting a batch prediction job: POST /programs/{name}/batch.

The caller's program version is resolved in the registry (dspy_service/program_store.py;
another user's program is simply not found), inline rows are checked for the version's
input fields, then the rows and a copy of the version document are stored (shared
storage, like POST /run's rows: flow-run parameters stay small and secret-free) and a run
of the batch deployment is created, tagged with its owner like every job. The version's
model config names its credential; `secured` (api/job_secrets.py) turns that into a
Secret block reference, which the job's supervisor hands to the sandboxed engine.

Failures: 404 for an unknown program, version or alias (or another user's); 409 for a
version whose stored document is gone or altered; 422 naming the first input field a row
lacks; 400 for more rows than DSPY_SERVICE_MAX_DATASET_ROWS or a credential the owner no
longer has; 429 over the active-jobs quota.
Anything failing after the rows or the document copy were stored deletes them again.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError

from api import views
from api.gateway import JobGateway
from api.identity import Caller
from api.job_secrets import secured
from api.quotas import check_active_jobs
from api.submission import stored_rows
from dspy_service.batch_spec import BatchRequest, BatchSpec, missing_input_field
from dspy_service.contract import SERVICE_TAG, user_tag
from dspy_service.errors import JobError
from dspy_service.program_store import CorruptDocument, ProgramNotFound, ProgramStore, read_document
from dspy_service.schemas import ModelConfig
from dspy_service.secret_store import SecretStore
from dspy_service.storage import delete_dataset, save_document


def missing_field_error(field: str, row: int) -> RequestValidationError:
    return RequestValidationError(
        [{"loc": ("body", "dataset", row, field), "msg": f"row {row} has no input field {field!r}", "type": "missing"}]
    )


def batch_spec(
    caller: Caller, name: str, entry_version: int, document: dict[str, Any], request: BatchRequest, num_threads: int
) -> BatchSpec:
    """The job parameter of a batch over one version (its model config: a credential NAME only)."""
    model = ModelConfig.model_validate(document.get("model_config") or {})
    if request.credential is not None:
        model = model.model_copy(update={"credential": request.credential})
    return BatchSpec(
        username=caller.username,
        name=request.name,
        program=name,
        version=entry_version,
        module_name=document.get("module_name"),
        input_fields=list(document.get("input_fields") or []),
        output_fields=list(document.get("output_fields") or []),
        main_model=model,
        num_threads=num_threads,
        dataset_source=request.dataset_source,
        dataset_format=request.dataset_format,
        timeout_seconds=request.timeout_seconds,
    )


async def submit_batch(
    gateway: JobGateway, secrets: SecretStore, caller: Caller, name: str, request: BatchRequest
) -> dict[str, Any]:
    """The new batch job (201 body: job_id, status, kind, program, ...)."""
    try:
        entry = await ProgramStore(gateway.client).resolve(caller.username, name, request.version, request.alias)
        document = await run_in_threadpool(read_document, entry)
    except ProgramNotFound as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    except CorruptDocument as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    input_fields = list(document.get("input_fields") or [])
    settings = gateway.settings
    if request.dataset is not None and len(request.dataset) > settings.max_dataset_rows:
        raise JobError(
            f"dataset has {len(request.dataset)} rows; the limit is {settings.max_dataset_rows} "
            "(DSPY_SERVICE_MAX_DATASET_ROWS)",
            field="dataset",
        )
    if request.dataset is not None:
        missing = missing_input_field(request.dataset, input_fields)
        if missing:
            raise missing_field_error(*missing)
    threads = min(request.num_threads or settings.num_threads, settings.max_batch_threads)
    spec = batch_spec(caller, name, entry.version, document, request, threads)
    await check_active_jobs(gateway, caller, caller.username)
    program_ref = await run_in_threadpool(save_document, document)
    try:
        async with secured(spec, secrets) as spec, stored_rows(request.dataset) as ref:  # type: ignore[arg-type]
            parameters: dict[str, Any] = {"job": spec.wire(), "program_ref": program_ref.model_dump(mode="json")}
            if ref is not None:
                parameters["dataset_ref"] = ref.model_dump(mode="json")
            run = await gateway.create_run(
                parameters,
                name=f"{caller.username}-batch-{name}-v{entry.version}".lower()[:100],
                tags=[SERVICE_TAG, user_tag(caller.username)],
                labels=None,
                idempotency_key=None,
                deployment=settings.batch_deployment_full_name,
            )
    except BaseException:
        delete_dataset(program_ref.url)
        raise
    return views.submitted(run, await gateway.status_of(run))
