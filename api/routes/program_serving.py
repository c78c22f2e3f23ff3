"""Serving registered programs: POST /programs/{name}/predict, GET /programs/{name}/usage.

The API resolves the version the caller names (a number, an alias, or `latest`) among the
caller's own programs (dspy_service/program_store.py; another user's program is a 404 like
an absent one; a resolution is reused for a few seconds, api/program_resolutions.py), checks
every input against the version's signature input fields, then forwards to the program
server (api/program_server.py), which runs the program in a sandboxed process of its own. The API never runs user code.

Answers: 404 unknown program, version or alias; 422 a missing input field (named), more
inputs than DSPY_SERVICE_PREDICT_MAX_BATCH, or both `version` and `alias`; 502 an LM error
(the provider's message, secrets scrubbed) or a program that fails or cannot be loaded;
503 its process exited under the request (with the reason) or the server is unreachable;
504 too slow.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, model_validator

from api.deps import GatewayDep
from api.identity import CurrentUser
from api.program_resolutions import ProgramResolutions, program_resolutions
from api.program_server import ProgramServerClient, ProgramServerError, get_program_server
from dspy_service.program_serving import PredictCall, missing_input_fields
from dspy_service.program_store import CorruptDocument, ProgramNotFound, ProgramStore, VersionEntry, read_document
from dspy_service.settings import get_settings

router = APIRouter(tags=["programs"])
ProgramServerDep = Annotated[ProgramServerClient, Depends(get_program_server)]
ResolutionsDep = Annotated[ProgramResolutions, Depends(program_resolutions)]
INPUT_FIELDS_CACHE = 1024


class PredictRequest(BaseModel):
    inputs: dict[str, Any] | list[dict[str, Any]] = Field(
        description="The signature's input fields and values; a list of such objects predicts a batch."
    )
    version: int | None = Field(default=None, ge=1, description="A version number (default: the alias).")
    alias: str | None = Field(default=None, description='An alias (default "latest": the highest version).')

    @model_validator(mode="after")
    def _version_or_alias(self) -> PredictRequest:
        if self.version is not None and self.alias is not None:
            raise ValueError("give `version` or `alias`, not both")
        return self


class PredictResponse(BaseModel):
    outputs: dict[str, Any] | list[dict[str, Any]]
    program: str
    version: int
    usage: dict[str, Any] = Field(description="LM usage of this call (calls, tokens, cost), summed over its inputs.")
    latency_ms: float


class InputFields:
    """A version's signature input fields, per document (versions are immutable)."""

    def __init__(self, size: int = INPUT_FIELDS_CACHE):
        self.size = size
        self.cache: OrderedDict[str, list[str]] = OrderedDict()

    async def of(self, entry: VersionEntry) -> list[str]:
        fields = self.cache.get(entry.document_sha256)
        if fields is None:
            try:
                document = await asyncio.to_thread(read_document, entry)
            except CorruptDocument as exc:
                raise HTTPException(status_code=502, detail=str(exc)) from None
            fields = [str(f) for f in document.get("input_fields") or []]
            self.cache[entry.document_sha256] = fields
            if len(self.cache) > self.size:
                self.cache.popitem(last=False)
        return fields


INPUT_FIELDS = InputFields()


def check_inputs(batch: list[dict[str, Any]], fields: list[str], single: bool) -> None:
    errors = []
    for index, inputs in enumerate(batch):
        for name in missing_input_fields(inputs, fields):
            where = ("body", "inputs", name) if single else ("body", "inputs", index, name)
            errors.append({"loc": where, "msg": f"missing input field {name!r} (the program's inputs: "
                           f"{', '.join(fields)})", "type": "missing"})
    if errors:
        raise RequestValidationError(errors)


async def resolve(gateway: GatewayDep, caller: CurrentUser, resolutions: ProgramResolutions, name: str,
                  version: int | None = None, alias: str | None = None) -> VersionEntry:
    async def read() -> VersionEntry:
        return await ProgramStore(gateway.client).resolve(caller.username, name, version, alias)

    try:
        return await resolutions.resolve(caller.username, name, version, alias, read)
    except ProgramNotFound as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None


@router.post(
    "/programs/{name}/predict",
    responses={404: {"description": "no such program, version or alias of yours"},
               422: {"description": "a missing input field, or too many inputs"},
               502: {"description": "LM error or the program failed"},
               503: {"description": "the program's process exited, or no program server"}},
)
async def predict(
    name: str, body: PredictRequest, caller: CurrentUser, gateway: GatewayDep, server: ProgramServerDep,
    resolutions: ResolutionsDep,
) -> PredictResponse:
    """Run a registered program on one input (`outputs` is an object) or a list of them
    (`outputs` is a list, in order), in the program server."""
    started = time.perf_counter()
    single = isinstance(body.inputs, dict)
    batch = [body.inputs] if isinstance(body.inputs, dict) else body.inputs
    limit = get_settings().predict_max_batch
    if not batch or len(batch) > limit:
        raise RequestValidationError([{"loc": ("body", "inputs"), "type": "too_long" if batch else "too_short",
                                       "msg": f"give 1 to {limit} inputs per call (DSPY_SERVICE_PREDICT_MAX_BATCH)"}])
    entry = await resolve(gateway, caller, resolutions, name, body.version, body.alias)
    check_inputs(batch, await INPUT_FIELDS.of(entry), single)
    call = PredictCall(owner=caller.username, name=name, version=entry.version, document_url=entry.document_url,
                       document_sha256=entry.document_sha256, inputs=batch)
    try:
        answer = await server.predict(call)
    except ProgramServerError as exc:
        raise HTTPException(status_code=exc.status, detail=exc.detail) from None
    return PredictResponse(
        outputs=answer.outputs[0] if single else answer.outputs,
        program=name,
        version=entry.version,
        usage=answer.usage,
        latency_ms=round((time.perf_counter() - started) * 1000, 3),
    )


@router.get("/programs/{name}/usage", responses={404: {"description": "no such program of yours"}})
async def program_usage(name: str, caller: CurrentUser, gateway: GatewayDep, server: ProgramServerDep):
    """Predictions, errors and LM usage of the program, in total and per version, summed
    by the program server since it started."""
    versions = await ProgramStore(gateway.client).versions(caller.username, name)
    if not versions:
        raise HTTPException(status_code=404, detail=f"program {name!r} not found")
    try:
        usage = await server.usage(caller.username, name)
    except ProgramServerError as exc:
        raise HTTPException(status_code=exc.status, detail=exc.detail) from None
    return {"name": name, **usage}
