"""ProgramStore.resolve (dspy_service/program_store.py) over the in-memory Prefect: a
number, an alias, `latest` (the highest version unless an alias named latest is set), each
owner's programs apart, 404s for what does not resolve, and one read per alias."""

from __future__ import annotations

import asyncio

import pytest

from dspy_service.contract import program_alias_variable, program_version_variable
from dspy_service.program_store import ProgramNotFound, ProgramStore, VersionEntry
from tests.support.memory_prefect import Prefect


def add_version(prefect: Prefect, owner: str, name: str, version: int) -> None:
    entry = VersionEntry(name, version, f"job-{version}", "2026-12-03T00:00:00+00:00", f"/p/v{version}.json",
                         f"sha{version}", {})
    prefect.variables[program_version_variable(owner, name, version)] = entry.value()


def resolve(prefect: Prefect, owner: str, name: str, version=None, alias=None) -> int:
    return asyncio.run(ProgramStore(prefect).resolve(owner, name, version, alias)).version


def test_numbers_aliases_and_latest_resolve_per_owner():
    prefect = Prefect()
    for version in (1, 2, 3):
        add_version(prefect, "alice", "arith", version)
    add_version(prefect, "bob", "arith", 1)
    prefect.variables[program_alias_variable("alice", "arith", "production")] = {"name": "arith", "version": 1}
    assert resolve(prefect, "alice", "arith", version=2) == 2
    assert resolve(prefect, "alice", "arith", alias="production") == 1
    assert resolve(prefect, "alice", "arith") == 3
    prefect.variables[program_alias_variable("alice", "arith", "latest")] = {"name": "arith", "version": 2}
    assert resolve(prefect, "alice", "arith") == 2  # an alias named latest wins
    assert resolve(prefect, "bob", "arith") == 1


def test_what_does_not_resolve_is_not_found():
    prefect = Prefect()
    add_version(prefect, "alice", "arith", 1)
    prefect.variables[program_alias_variable("alice", "arith", "stale")] = {"name": "arith", "version": 7}
    for owner, kwargs in [("alice", {"alias": "nope"}), ("alice", {"version": 4}), ("alice", {"alias": "stale"}),
                          ("carol", {})]:
        with pytest.raises(ProgramNotFound):
            resolve(prefect, owner, "arith", **kwargs)


def test_an_alias_resolves_in_one_read_and_follows_a_move():
    prefect = Prefect()
    for version in (1, 2):
        add_version(prefect, "alice", "arith", version)
    store = ProgramStore(prefect)
    asyncio.run(store.set_alias("alice", "arith", "production", 1))
    reads: list[str] = []
    read = prefect.read_variable_by_name

    async def counted(name: str):
        reads.append(name)
        return await read(name)

    prefect.read_variable_by_name = counted
    entry = asyncio.run(store.resolve("alice", "arith", alias="production"))
    assert (entry.version, entry.job_id, entry.document_sha256) == (1, "job-1", "sha1")
    assert reads == [program_alias_variable("alice", "arith", "production")]
    asyncio.run(store.set_alias("alice", "arith", "production", 2))
    assert resolve(prefect, "alice", "arith", alias="production") == 2
