"""api/program_resolutions.py: a replica reuses a program resolution for its cache time,
never across owners, and forgets a program at once when it changes through this replica."""

from __future__ import annotations

import asyncio

import pytest

from api import program_resolutions as module
from api.program_resolutions import ProgramResolutions
from dspy_service.program_store import ProgramNotFound, VersionEntry


def entry(version: int, name: str = "qa") -> VersionEntry:
    return VersionEntry(name, version, f"job-{version}", "2026-12-04T00:00:00Z", f"file:///{name}/{version}", "sha", {})


class Reads:
    """A stand-in for the Prefect read: answers `current[0]` and counts the reads."""

    def __init__(self, version: int = 1):
        self.current = [entry(version)]
        self.count = 0

    async def __call__(self) -> VersionEntry:
        self.count += 1
        return self.current[0]


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    return now


def resolve(cache: ProgramResolutions, read, owner="alice", name="qa", version=None, alias="production"):
    return asyncio.run(cache.resolve(owner, name, version, alias, read)).version


def test_a_resolution_is_reused_until_it_expires(clock):
    cache, read = ProgramResolutions(1.0), Reads(1)
    assert resolve(cache, read) == 1 and resolve(cache, read) == 1
    assert read.count == 1
    read.current[0] = entry(2)  # moved through another replica
    clock[0] += 0.5
    assert resolve(cache, read) == 1  # within the cache time: the old answer, no read
    clock[0] += 0.6
    assert resolve(cache, read) == 2 and read.count == 2


def test_owners_names_versions_and_aliases_are_separate_keys(clock):
    cache, read = ProgramResolutions(5.0), Reads(1)
    resolve(cache, read)
    resolve(cache, read, owner="bob")
    resolve(cache, read, name="other")
    resolve(cache, read, alias="staging")
    resolve(cache, read, version=1, alias=None)
    assert read.count == 5


def test_a_change_through_this_replica_is_seen_at_once(clock):
    cache, read = ProgramResolutions(30.0), Reads(1)
    other = Reads(7)
    assert resolve(cache, read) == 1 and resolve(cache, other, name="other") == 7
    read.current[0] = entry(2)
    cache.forget("alice", "qa")
    assert resolve(cache, read) == 2 and read.count == 2
    assert resolve(cache, other, name="other") == 7 and other.count == 1  # other programs keep theirs
    cache.forget("bob", "qa")  # another owner's program of the same name: alice's entry stays
    assert resolve(cache, read) == 2 and read.count == 2


def test_not_found_is_never_cached(clock):
    cache = ProgramResolutions(30.0)
    calls = []

    async def missing() -> VersionEntry:
        calls.append(1)
        raise ProgramNotFound("program 'qa' has no alias 'production'")

    for _ in range(2):
        with pytest.raises(ProgramNotFound):
            asyncio.run(cache.resolve("alice", "qa", None, "production", missing))
    assert len(calls) == 2


def test_zero_seconds_reads_every_time(clock):
    cache, read = ProgramResolutions(0), Reads(1)
    resolve(cache, read)
    resolve(cache, read)
    assert read.count == 2


def test_the_cache_stays_bounded(clock, monkeypatch):
    monkeypatch.setattr(module, "MOST_ENTRIES", 3)
    cache, read = ProgramResolutions(30.0), Reads(1)
    for i in range(10):
        resolve(cache, read, name=f"p{i}")
    assert len(cache._entries) <= 3
