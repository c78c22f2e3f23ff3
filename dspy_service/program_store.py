"""The program registry's store: immutable program versions and movable aliases, per owner.

No table of our own. Each version is two things:

- its **document** (everything that rebuilds and describes the program, `ProgramDocument`),
  a JSON file in shared storage (`<DSPY_SERVICE_STORAGE_URL>/programs/...`), because
  Prefect caps a Variable's value at 5000 characters and a program state with demos is
  larger. The file is the version's own copy: deleting the job it came from leaves it;
- its **entry**, the Prefect Variable `contract.program_version_variable(owner, name, v)`
  holding `{name, version, job_id, created_at, document_url, document_sha256, ...}`.
  Creating a Variable is atomic, so two registrations of one name never get the same
  number: the loser of a race retries with the next one.

A deleted version leaves a tombstone in its Variable (`{"name", "version", "deleted_at"}`,
no document), so its number is never handed out again: a version number names one
program forever.

An alias is the Variable `contract.program_alias_variable(owner, name, alias)` holding
`{"version": v}`. `latest` is the highest version unless an alias of that name is set.
Names of Variables carry digests of the owner and the program name (fixed length), so a
prefix filter never mixes two owners or two programs.

How it fails: `ProgramNotFound` (no such program, version or alias of this owner: the
API answers 404 whether it is absent or another user's), `AliasInUse` (deleting a version
an alias points to: 409), `CorruptDocument` (a document that is gone or whose SHA-256
differs from its entry's). Prefect's transport and HTTP errors propagate.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import fsspec
import httpx
import orjson
from prefect.client.schemas.actions import VariableCreate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from dspy_service.contract import (
    LATEST_ALIAS,
    PROGRAM_ALIAS_PATTERN,
    PROGRAM_NAME_PATTERN,
    program_alias_prefix,
    program_alias_variable,
    program_owner_alias_prefix,
    program_owner_prefix,
    program_version_prefix,
    program_version_variable,
)
from dspy_service.prefect_pages import read_in_pages
from dspy_service.settings import get_settings

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

logger = logging.getLogger("dspy_service.program_store")

PROGRAM_TAG = "dspy-service-program"
PROGRAMS_DIR = "programs"
MAX_CLAIM_ATTEMPTS = 20


class ProgramStoreError(Exception):
    """A request the registry cannot carry out (see the subclasses)."""


class ProgramNotFound(ProgramStoreError):
    pass


class AliasInUse(ProgramStoreError):
    pass


class CorruptDocument(ProgramStoreError):
    pass


def checked_name(value: str, pattern: str, what: str, most: int) -> str:
    """`value` if it is a valid program name or alias (`what`); ValueError saying the rule."""
    if not isinstance(value, str) or not re.fullmatch(pattern, value):
        raise ValueError(
            f"invalid {what} {value!r}: 1-{most} characters, lowercase letters, digits, '-' and '_', "
            "starting with a letter or digit"
        )
    return value


def check_program_name(name: str) -> str:
    return checked_name(name, PROGRAM_NAME_PATTERN, "program name", 64)


def check_alias(alias: str) -> str:
    return checked_name(alias, PROGRAM_ALIAS_PATTERN, "alias", 40)


@dataclass(frozen=True)
class VersionEntry:
    """One registered version as its Variable holds it (small: no program state)."""

    name: str
    version: int
    job_id: str
    created_at: str
    document_url: str
    document_sha256: str
    summary: dict[str, Any]  # optimized/baseline test metric, optimizer, module: for listings

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "job_id": self.job_id,
            "created_at": self.created_at,
            **self.summary,
        }

    @classmethod
    def from_value(cls, value: Any) -> VersionEntry | None:
        if not isinstance(value, dict):
            return None
        try:
            return cls(
                name=str(value["name"]),
                version=int(value["version"]),
                job_id=str(value["job_id"]),
                created_at=str(value["created_at"]),
                document_url=str(value["document_url"]),
                document_sha256=str(value["document_sha256"]),
                summary=dict(value.get("summary") or {}),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def value(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "job_id": self.job_id,
            "created_at": self.created_at,
            "document_url": self.document_url,
            "document_sha256": self.document_sha256,
            "summary": self.summary,
        }


def _storage_url(*parts: str) -> str:
    return "/".join([get_settings().resolved_storage_url.rstrip("/"), PROGRAMS_DIR, *parts])


def document_url(owner: str, name: str, version: int) -> str:
    digest = hashlib.sha256(f"{owner}\0{name}".encode()).hexdigest()[:24]
    return _storage_url(digest, f"v{version}.json")


def write_document(url: str, document: dict[str, Any]) -> str:
    """Write a document; returns its SHA-256."""
    data = orjson.dumps(document)
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as handle:
        handle.write(data)
    return hashlib.sha256(data).hexdigest()


def read_document(entry: VersionEntry) -> dict[str, Any]:
    """The version's document, checked against its entry's SHA-256."""
    if not entry.document_url.startswith(_storage_url("")):
        raise CorruptDocument(f"version {entry.version} of {entry.name!r} names a document outside the registry")
    try:
        with fsspec.open(entry.document_url, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise CorruptDocument(f"the stored copy of version {entry.version} of {entry.name!r} is gone") from None
    if hashlib.sha256(data).hexdigest() != entry.document_sha256:
        raise CorruptDocument(f"the stored copy of version {entry.version} of {entry.name!r} was altered")
    return orjson.loads(data)


def delete_document(url: str) -> None:
    if not url.startswith(_storage_url("")):
        return
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class ProgramStore:
    """Versions and aliases of programs, each owned by one user."""

    def __init__(self, client: PrefectClient):
        self.client = client

    async def _variables(self, prefix: str) -> list[dict[str, Any]]:
        async def read_page(limit: int, offset: int) -> list[dict[str, Any]]:
            body = {"variables": {"name": {"like_": f"{prefix}%"}}, "limit": limit, "offset": offset}
            return (await self.client.request("POST", "/variables/filter", json=body)).json()

        return [v for v in await read_in_pages(read_page, limit=None) if str(v.get("name", "")).startswith(prefix)]

    # -- versions -----------------------------------------------------------------------
    async def versions(self, owner: str, name: str) -> list[VersionEntry]:
        """The program's versions, oldest first (empty: no such program)."""
        entries = [VersionEntry.from_value(v.get("value")) for v in await self._variables(
            program_version_prefix(owner, name))]
        return sorted((e for e in entries if e is not None and e.name == name), key=lambda e: e.version)

    async def programs(self, owner: str) -> dict[str, list[VersionEntry]]:
        """Every program of `owner`: name -> versions, oldest first."""
        found: dict[str, list[VersionEntry]] = {}
        for variable in await self._variables(program_owner_prefix(owner)):
            entry = VersionEntry.from_value(variable.get("value"))
            if entry is not None and variable.get("name") == program_version_variable(owner, entry.name, entry.version):
                found.setdefault(entry.name, []).append(entry)
        return {name: sorted(entries, key=lambda e: e.version) for name, entries in sorted(found.items())}

    async def version(self, owner: str, name: str, version: int) -> VersionEntry:
        variable = await self.client.read_variable_by_name(program_version_variable(owner, name, version))
        entry = VersionEntry.from_value(variable.value if variable is not None else None)
        if entry is None or entry.name != name or entry.version != version:
            raise ProgramNotFound(f"program {name!r} has no version {version}")
        return entry

    async def _highest_claimed(self, owner: str, name: str) -> int:
        """The highest version number ever claimed for `name`, tombstones included (0: none)."""
        prefix = program_version_prefix(owner, name)
        numbers = [int(rest) for v in await self._variables(prefix)
                   if (rest := str(v["name"])[len(prefix):]).isdigit()]
        return max(numbers, default=0)

    async def register(self, owner: str, name: str, job_id: str, document: dict[str, Any]) -> VersionEntry:
        """Store `document` as the next version of `name`; returns its entry. The document
        gets its `name`, `version`, `owner`, `job_id` and `created_at` set here. If the
        document cannot be written, the claimed number is given up again and the error raised."""
        check_program_name(name)
        version = await self._highest_claimed(owner, name) + 1
        for _ in range(MAX_CLAIM_ATTEMPTS):
            created = now_iso()
            full = {**document, "name": name, "version": version, "owner": owner, "job_id": job_id,
                    "created_at": created}
            url = document_url(owner, name, version)
            entry = VersionEntry(name, version, job_id, created, url, "", summary_of(full))
            try:
                # Claim the number first (atomic), then write the file and fill in its hash:
                # a claim that fails leaves no file of ours behind.
                await self.client.create_variable(VariableCreate(
                    name=program_version_variable(owner, name, version), value=entry.value(),
                    tags=[PROGRAM_TAG]))
            except ObjectAlreadyExists:
                version += 1
                continue
            try:
                sha = write_document(url, full)
                entry = VersionEntry(name, version, job_id, created, url, sha, entry.summary)
                await self._update(program_version_variable(owner, name, version), entry.value())
            except BaseException:
                # Storage or Prefect failed after the claim: give the number up as a tombstone
                # rather than leave an entry whose document is missing or unchecked.
                try:
                    await self._tombstone(owner, name, version)
                    delete_document(url)
                except Exception:  # noqa: BLE001 - the original failure is the one to report
                    logger.exception("could not give up version %s of %r", version, name)
                raise
            return entry
        raise ProgramStoreError(f"could not claim a version number for {name!r}: too many concurrent registrations")

    async def _update(self, variable_name: str, value: dict[str, Any]) -> None:
        """Replace a Variable's value; ObjectNotFound when there is no such Variable."""
        try:
            await self.client.request(
                "PATCH", "/variables/name/{name}", path_params={"name": variable_name}, json={"value": value})
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 404:
                raise ObjectNotFound(http_exc=exc) from None
            raise

    async def delete_version(self, owner: str, name: str, version: int) -> None:
        entry = await self.version(owner, name, version)
        using = sorted(alias for alias, v in (await self.aliases(owner, name)).items() if v == version)
        if using:
            raise AliasInUse(f"version {version} of {name!r} is what alias(es) {', '.join(using)} point to; "
                             "move or delete them first")
        await self._tombstone(owner, name, version)
        delete_document(entry.document_url)

    async def _tombstone(self, owner: str, name: str, version: int) -> None:
        """Mark the version deleted, keeping its number claimed (no entry reads it any more)."""
        try:
            await self._update(program_version_variable(owner, name, version),
                               {"name": name, "version": version, "deleted_at": now_iso()})
        except ObjectNotFound:
            pass

    # -- aliases ------------------------------------------------------------------------
    async def aliases(self, owner: str, name: str) -> dict[str, int]:
        prefix = program_alias_prefix(owner, name)
        found = {}
        for variable in await self._variables(prefix):
            value = variable.get("value")
            alias = str(variable["name"])[len(prefix):]
            if isinstance(value, dict) and value.get("name") == name and isinstance(value.get("version"), int):
                found[alias] = value["version"]
        return dict(sorted(found.items()))

    async def all_aliases(self, owner: str) -> dict[str, dict[str, int]]:
        """Every alias of every program of `owner`: name -> {alias: version} (one query)."""
        found: dict[str, dict[str, int]] = {}
        for variable in await self._variables(program_owner_alias_prefix(owner)):
            value = variable.get("value")
            if not isinstance(value, dict) or not isinstance(value.get("version"), int):
                continue
            name, prefix = str(value.get("name")), program_alias_prefix(owner, str(value.get("name")))
            if str(variable["name"]).startswith(prefix):
                found.setdefault(name, {})[str(variable["name"])[len(prefix):]] = value["version"]
        return {name: dict(sorted(aliases.items())) for name, aliases in sorted(found.items())}

    async def set_alias(self, owner: str, name: str, alias: str, version: int) -> None:
        check_alias(alias)
        entry = await self.version(owner, name, version)  # ProgramNotFound for a version that is not there
        variable = program_alias_variable(owner, name, alias)
        # The version's entry rides along: versions are immutable and an aliased one cannot be
        # deleted, so resolving the alias (every predict through it) takes one read, not two.
        value = {"name": name, "version": version, "updated_at": now_iso(), "entry": entry.value()}
        try:
            await self.client.create_variable(VariableCreate(name=variable, value=value, tags=[PROGRAM_TAG]))
        except ObjectAlreadyExists:
            await self._update(variable, value)

    async def delete_alias(self, owner: str, name: str, alias: str) -> None:
        try:
            await self.client.delete_variable_by_name(program_alias_variable(owner, name, alias))
        except ObjectNotFound:
            raise ProgramNotFound(f"program {name!r} has no alias {alias!r}") from None

    # -- resolution -----------------------------------------------------------------------
    async def resolve(
        self, owner: str, name: str, version: int | None = None, alias: str | None = None
    ) -> VersionEntry:
        """The version a request names: a number, an alias, or (neither) `latest`."""
        if version is not None:
            return await self.version(owner, name, version)
        alias = alias or LATEST_ALIAS
        variable = await self.client.read_variable_by_name(program_alias_variable(owner, name, alias))
        value = variable.value if variable is not None else None
        if isinstance(value, dict) and value.get("name") == name and isinstance(value.get("version"), int):
            carried = VersionEntry.from_value(value.get("entry"))
            if carried is not None and (carried.name, carried.version) == (name, value["version"]):
                return carried
            return await self.version(owner, name, value["version"])
        if alias != LATEST_ALIAS:
            raise ProgramNotFound(f"program {name!r} has no alias {alias!r}")
        versions = await self.versions(owner, name)
        if not versions:
            raise ProgramNotFound(f"program {name!r} not found")
        return versions[-1]


def summary_of(document: dict[str, Any]) -> dict[str, Any]:
    """What listings show of a version without reading its document."""
    metrics = document.get("metrics") or {}
    return {
        "optimized_test_metric": metrics.get("optimized_test_metric"),
        "baseline_test_metric": metrics.get("baseline_test_metric"),
        "module_name": document.get("module_name"),
        "optimizer_name": document.get("optimizer_name"),
    }
