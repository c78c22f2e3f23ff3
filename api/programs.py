"""The program registry over HTTP: register a successful job's program, list, read, alias,
delete and export versions (routes in api/routes/programs.py, storage in
dspy_service/program_store.py).

Programs are keyed by owner: every call acts on the caller's own programs, admins
included (an admin sees and manages the programs they registered, not everyone's; an
admin may register any job they can read, like other routes' `caller.owns`). The API
never runs user code here: the info and manifest come from the stored document's JSON.

How it fails: a job that is unknown, another user's, not succeeded or without a program
state is a 404 (`JobNotRegistrable`); an unknown program, version or alias is a 404, an
alias pointing at a version being deleted a 409, a stored document that is gone or
altered a 500 naming the version (handlers in api/errors.py); info with both `version`
and `alias` a 400 naming `alias`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.gateway import JobGateway
from api.identity import Caller
from api.ownership import run_owner
from api.program_resolutions import ProgramResolutions
from api.status import JobStatus
from api.views import job_spec_of
from dspy_service.contract import LATEST_ALIAS, PROGRAM_NAME_PATTERN
from dspy_service.errors import JobError
from dspy_service.program_documents import build_document, program_info
from dspy_service.program_export import export_archive, manifest_of
from dspy_service.program_store import ProgramNotFound, ProgramStore, VersionEntry, read_document


class JobNotRegistrable(ProgramNotFound):
    """The job named in POST /programs cannot give a program (404)."""


class ProgramRegister(BaseModel):
    """POST /programs."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=PROGRAM_NAME_PATTERN,
        description="1-64 characters: lowercase letters, digits, '-' and '_', starting with a letter or digit.",
    )
    job_id: str = Field(min_length=1, max_length=100, description="A successful job of yours.")


class AliasTarget(BaseModel):
    """PUT /programs/{name}/aliases/{alias}."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, description="The version the alias points to.")


class VersionView(BaseModel):
    name: str
    version: int
    job_id: str
    created_at: str
    optimized_test_metric: float | None = None
    baseline_test_metric: float | None = None
    module_name: str | None = None
    optimizer_name: str | None = None
    aliases: list[str] = Field(default_factory=list, description="Aliases set to this version.")


class ProgramSummary(BaseModel):
    name: str
    latest_version: int = Field(description="The version `latest` resolves to.")
    version_count: int
    aliases: dict[str, int]
    created_at: str = Field(description="When the oldest version kept was registered.")
    updated_at: str = Field(description="When the newest version was registered.")


class ProgramList(BaseModel):
    items: list[ProgramSummary]
    total: int


class ProgramDetail(BaseModel):
    name: str
    latest_version: int
    versions: list[VersionView] = Field(description="Oldest first.")
    aliases: dict[str, int]


class VersionManifest(BaseModel):
    """A version's document without the program state (the export's manifest.json)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, protected_namespaces=())

    name: str
    version: int
    job_id: str
    created_at: str
    module_name: str
    module_kwargs: dict[str, Any]
    signature_code: str
    metrics: dict[str, Any]
    dataset: dict[str, Any]
    metric_code_sha256: str
    main_model: dict[str, Any] = Field(alias="model_config", description="Public settings; credentials by name.")
    versions: dict[str, Any]
    aliases: list[str] = Field(default_factory=list)


class ProgramInfo(BaseModel):
    name: str
    version: int
    module_name: str | None
    input_fields: list[str]
    output_fields: list[str]
    instructions: list[str]
    demo_count: int
    predictors: list[dict[str, Any]]
    model: str | None


class AliasView(BaseModel):
    name: str
    alias: str
    version: int


class AliasDeleted(BaseModel):
    name: str
    alias: str
    deleted: bool = True


class VersionDeleted(BaseModel):
    name: str
    version: int
    deleted: bool = True


def version_view(entry: VersionEntry, aliases: dict[str, int]) -> VersionView:
    return VersionView(**entry.public(), aliases=[a for a, v in aliases.items() if v == entry.version])


def latest_of(versions: list[VersionEntry], aliases: dict[str, int]) -> int:
    return aliases.get(LATEST_ALIAS, versions[-1].version)


class Programs:
    """The caller's programs (the store keyed by `caller.username`)."""

    def __init__(self, gateway: JobGateway, caller: Caller, resolutions: ProgramResolutions):
        self.gateway = gateway
        self.store = ProgramStore(gateway.client)
        self.owner = caller.username
        self.caller = caller
        # Every change below drops this replica's cached resolutions of the program at once.
        self.resolutions = resolutions

    async def register(self, body: ProgramRegister) -> VersionView:
        run = await self.gateway.get(body.job_id)
        if run is None or not self.caller.owns(run_owner(run)):
            raise JobNotRegistrable(f"job {body.job_id} not found")
        outcome = await self.gateway.outcome(run)
        if outcome.status is not JobStatus.success or not outcome.result:
            why = f": {outcome.message}" if outcome.message else ""
            raise JobNotRegistrable(
                f"job {body.job_id} did not succeed (status {outcome.status.value}{why}); only a successful job's "
                "program can be registered"
            )
        spec = job_spec_of(run)
        if spec is None:
            raise JobNotRegistrable(f"job {body.job_id} has no readable job spec")
        try:
            document = build_document(spec, outcome.result)
        except ValueError as exc:
            raise JobNotRegistrable(f"job {body.job_id} has no program to register: {exc}") from None
        entry = await self.store.register(self.owner, body.name, str(run["id"]), document)
        self.resolutions.forget(self.owner, body.name)
        return version_view(entry, {})

    async def list(self) -> ProgramList:
        programs, aliases = await self.store.programs(self.owner), await self.store.all_aliases(self.owner)
        items = [
            ProgramSummary(
                name=name,
                latest_version=latest_of(versions, aliases.get(name, {})),
                version_count=len(versions),
                aliases=aliases.get(name, {}),
                created_at=versions[0].created_at,
                updated_at=versions[-1].created_at,
            )
            for name, versions in programs.items()
            if versions
        ]
        return ProgramList(items=items, total=len(items))

    async def detail(self, name: str) -> ProgramDetail:
        versions = await self.store.versions(self.owner, name)
        if not versions:
            raise ProgramNotFound(f"program {name!r} not found")
        aliases = await self.store.aliases(self.owner, name)
        return ProgramDetail(
            name=name,
            latest_version=latest_of(versions, aliases),
            versions=[version_view(entry, aliases) for entry in versions],
            aliases=aliases,
        )

    async def document(self, name: str, version: int | None = None, alias: str | None = None) -> dict[str, Any]:
        return read_document(await self.store.resolve(self.owner, name, version=version, alias=alias))

    async def manifest(self, name: str, version: int) -> dict[str, Any]:
        document = await self.document(name, version)
        aliases = await self.store.aliases(self.owner, name)
        return {**manifest_of(document), "aliases": [a for a, v in aliases.items() if v == version]}

    async def info(self, name: str, version: int | None, alias: str | None) -> dict[str, Any]:
        if version is not None and alias is not None:
            raise JobError("give `version` or `alias`, not both", field="alias")
        return program_info(await self.document(name, version, alias))

    async def export(self, name: str, version: int) -> bytes:
        return export_archive(await self.document(name, version))

    async def delete_version(self, name: str, version: int) -> VersionDeleted:
        await self.store.delete_version(self.owner, name, version)
        self.resolutions.forget(self.owner, name)
        return VersionDeleted(name=name, version=version)

    async def set_alias(self, name: str, alias: str, target: AliasTarget) -> AliasView:
        await self.store.set_alias(self.owner, name, alias, target.version)
        self.resolutions.forget(self.owner, name)
        return AliasView(name=name, alias=alias, version=target.version)

    async def delete_alias(self, name: str, alias: str) -> AliasDeleted:
        await self.store.delete_alias(self.owner, name, alias)
        self.resolutions.forget(self.owner, name)
        return AliasDeleted(name=name, alias=alias)
