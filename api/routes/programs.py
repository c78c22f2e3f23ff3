"""/programs: the registry of optimized programs (logic in api/programs.py).

The caller's own programs only (admins too: programs are keyed by owner). Another
user's program, version or alias is a 404, exactly like one that does not exist.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response

from api.deps import GatewayDep
from api.identity import CurrentUser
from api.openapi import ErrorDetail
from api.program_resolutions import ProgramResolutions, program_resolutions
from api.programs import (
    AliasDeleted,
    AliasTarget,
    AliasView,
    ProgramDetail,
    ProgramInfo,
    ProgramList,
    ProgramRegister,
    Programs,
    VersionDeleted,
    VersionManifest,
    VersionView,
)
from dspy_service.contract import PROGRAM_ALIAS_PATTERN, PROGRAM_NAME_PATTERN

router = APIRouter(tags=["programs"])


async def get_programs(
    gateway: GatewayDep, caller: CurrentUser, resolutions: Annotated[ProgramResolutions, Depends(program_resolutions)]
) -> Programs:
    return Programs(gateway, caller, resolutions)


ProgramsDep = Annotated[Programs, Depends(get_programs)]
NameParam = Annotated[str, Path(pattern=PROGRAM_NAME_PATTERN, description="The program's name.")]
VersionParam = Annotated[int, Path(ge=1, description="A version number (from 1).")]
AliasParam = Annotated[str, Path(pattern=PROGRAM_ALIAS_PATTERN, description="An alias, e.g. production.")]
NOT_FOUND = {404: {"model": ErrorDetail, "description": "No such program, version, alias or job of yours"}}
ALIASED = {409: {"model": ErrorDetail, "description": "An alias points to this version"}}


@router.post("/programs", status_code=201, response_model=VersionView, responses=NOT_FOUND)
async def register_program(body: ProgramRegister, programs: ProgramsDep):
    """Register a successful job's program as the next immutable version of `name` (from 1).
    The version keeps its own copy: deleting the job later leaves it."""
    return await programs.register(body)


@router.get("/programs", response_model=ProgramList)
async def list_programs(programs: ProgramsDep):
    """Your programs: latest version, version count, aliases, first and last registration."""
    return await programs.list()


@router.get("/programs/{name}", response_model=ProgramDetail, responses=NOT_FOUND)
async def get_program(name: NameParam, programs: ProgramsDep):
    """The program's versions (oldest first, with metrics) and aliases."""
    return await programs.detail(name)


@router.get(
    "/programs/{name}/info",
    response_model=ProgramInfo,
    responses={**NOT_FOUND, 400: {"model": ErrorDetail, "description": "Both `version` and `alias` given"}},
)
async def get_program_info(
    name: NameParam,
    programs: ProgramsDep,
    version: Annotated[int | None, Query(ge=1)] = None,
    alias: Annotated[str | None, Query(pattern=PROGRAM_ALIAS_PATTERN)] = None,
):
    """Input/output fields, instructions and demo count of a version (default: `latest`);
    read from the stored document, no LM call."""
    return await programs.info(name, version, alias)


@router.get("/programs/{name}/versions/{version}", response_model=VersionManifest, responses=NOT_FOUND)
async def get_program_version(name: NameParam, version: VersionParam, programs: ProgramsDep):
    """The version's manifest: everything stored but the program state."""
    return await programs.manifest(name, version)


@router.get(
    "/programs/{name}/versions/{version}/export",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}, "description": "the exported program"}, **NOT_FOUND},
)
async def export_program_version(name: NameParam, version: VersionParam, programs: ProgramsDep):
    """A zip: program.json (DSPy state), signature.py, manifest.json, README.md; load it with
    `dspy_service.client.load_program(path)`."""
    return Response(
        await programs.export(name, version),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}-v{version}.zip"'},
    )


@router.delete(
    "/programs/{name}/versions/{version}",
    response_model=VersionDeleted,
    responses={**NOT_FOUND, **ALIASED},
)
async def delete_program_version(name: NameParam, version: VersionParam, programs: ProgramsDep):
    """Delete a version (its number is never reused); refused while an alias points to it."""
    return await programs.delete_version(name, version)


@router.put("/programs/{name}/aliases/{alias}", response_model=AliasView, responses=NOT_FOUND)
async def set_program_alias(name: NameParam, alias: AliasParam, target: AliasTarget, programs: ProgramsDep):
    """Point `alias` at a version (created or moved)."""
    return await programs.set_alias(name, alias, target)


@router.delete("/programs/{name}/aliases/{alias}", response_model=AliasDeleted, responses=NOT_FOUND)
async def delete_program_alias(name: NameParam, alias: AliasParam, programs: ProgramsDep):
    return await programs.delete_alias(name, alias)
