"""ProgramStore.resolve (dspy_service/program_store.py) over a stand-in for Prefect's
Variables API: a number, an alias, `latest` (the highest version unless an alias named
latest is set), each owner's programs apart, and 404s for what does not resolve."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from dspy_service.contract import program_alias_variable, program_version_variable
from dspy_service.program_store import ProgramNotFound, ProgramStore, VersionEntry


class Variables:
    """The two calls resolve makes: read one Variable by name, filter Variables by prefix."""

    def __init__(self) -> None:
        self.values: dict[str, dict] = {}

    async def read_variable_by_name(self, name: str):
        return SimpleNamespace(value=self.values[name]) if name in self.values else None

    async def request(self, method: str, path: str, json: dict):
        assert (method, path) == ("POST", "/variables/filter")
        prefix = json["variables"]["name"]["like_"].rstrip("%")
        found = [{"name": n, "value": v} for n, v in sorted(self.values.items()) if n.startswith(prefix)]
        return SimpleNamespace(json=lambda: found[json["offset"]: json["offset"] + json["limit"]])


def add_version(variables: Variables, owner: str, name: str, version: int) -> None:
    entry = VersionEntry(name, version, f"job-{version}", "2026-12-03T00:00:00+00:00", f"/p/v{version}.json",
                         f"sha{version}", {})
    variables.values[program_version_variable(owner, name, version)] = entry.value()


def resolve(variables: Variables, owner: str, name: str, version=None, alias=None) -> int:
    return asyncio.run(ProgramStore(variables).resolve(owner, name, version, alias)).version


def test_numbers_aliases_and_latest_resolve_per_owner():
    variables = Variables()
    for version in (1, 2, 3):
        add_version(variables, "alice", "arith", version)
    add_version(variables, "bob", "arith", 1)
    variables.values[program_alias_variable("alice", "arith", "production")] = {"name": "arith", "version": 1}
    assert resolve(variables, "alice", "arith", version=2) == 2
    assert resolve(variables, "alice", "arith", alias="production") == 1
    assert resolve(variables, "alice", "arith") == 3
    variables.values[program_alias_variable("alice", "arith", "latest")] = {"name": "arith", "version": 2}
    assert resolve(variables, "alice", "arith") == 2  # an alias named latest wins
    assert resolve(variables, "bob", "arith") == 1


def test_what_does_not_resolve_is_not_found():
    variables = Variables()
    add_version(variables, "alice", "arith", 1)
    variables.values[program_alias_variable("alice", "arith", "stale")] = {"name": "arith", "version": 7}
    for owner, kwargs in [("alice", {"alias": "nope"}), ("alice", {"version": 4}), ("alice", {"alias": "stale"}),
                          ("carol", {})]:
        with pytest.raises(ProgramNotFound):
            resolve(variables, owner, "arith", **kwargs)
