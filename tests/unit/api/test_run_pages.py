"""Status-filtered pages over one or several sets of runs (GET /jobs, a schedule's runs).

The run source is an in-memory stand-in for the job gateway (our own interface, not
Prefect's): it applies the state-type part of the filter it is given, the tag that
names a set, the sort and the limit/offset, as the Prefect server does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.sorting import FlowRunSort

from api.run_pages import merge_newest_first, read_page
from api.status import JobStatus

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def run(minute: int, state_type: str) -> dict:
    expected = (START + dt.timedelta(minutes=minute)).isoformat().replace("+00:00", "Z")
    return {"id": str(uuid.uuid4()), "state_type": state_type, "expected_start_time": expected}


class Source:
    def __init__(self, sets: dict[str, list[dict]], compile_started: set[uuid.UUID] = frozenset()):
        self.sets = sets
        self.started = set(compile_started)
        self.state_types_read: list[set[str] | None] = []

    def matching(self, run_filter: FlowRunFilter) -> list[dict]:
        runs = self.sets[run_filter.tags.all_[0]]
        types = {str(t.value) for t in run_filter.state.type.any_} if run_filter.state else None
        self.state_types_read.append(types)
        return [r for r in runs if types is None or r["state_type"] in types]

    async def read_runs(self, run_filter, sort, *, limit, offset=0):
        assert sort is FlowRunSort.EXPECTED_START_TIME_DESC
        newest_first = sorted(self.matching(run_filter), key=lambda r: r["expected_start_time"], reverse=True)
        return newest_first[offset : offset + limit]

    async def count_runs(self, run_filter):
        return len(self.matching(run_filter))

    async def compile_started(self, runs):
        return {uuid.UUID(r["id"]) for r in runs} & self.started


def named(*names: str) -> list[FlowRunFilter]:
    return [FlowRunFilter(tags=FlowRunFilterTags(all_=[name])) for name in names]


def page(source, filters, status=None, *, limit, offset):
    return asyncio.run(read_page(source, filters, status, limit=limit, offset=offset))


def test_a_page_of_the_union_of_two_sets_is_newest_first():
    scheduled = [run(m, "COMPLETED") for m in range(0, 20, 2)]  # even minutes
    by_hand = [run(m, "COMPLETED") for m in range(1, 20, 2)]  # odd minutes
    source = Source({"scheduled": scheduled, "by-hand": by_hand})
    result = page(source, named("scheduled", "by-hand"), limit=5, offset=3)
    minutes = [int(r["expected_start_time"][14:16]) for r in result.runs]
    assert minutes == [16, 15, 14, 13, 12] and result.total == 20


def test_a_page_of_one_set_is_cut_by_the_server():
    runs = [run(m, "COMPLETED") for m in range(10)]
    result = page(Source({"all": runs}), named("all"), limit=3, offset=8)
    assert [r["id"] for r in result.runs] == [runs[1]["id"], runs[0]["id"]] and result.total == 10


@pytest.mark.parametrize("offset", [10**12, 2**63, 10**40])
def test_an_offset_past_every_run_is_an_empty_page_never_asked_of_the_server(offset):
    source = Source({"a": [run(m, "COMPLETED") for m in range(3)], "b": [run(5, "FAILED")]})

    async def refuse(*args, **kwargs):
        raise AssertionError("Prefect's SQLite fails on integers over 2**63")

    source.read_runs = refuse
    for filters in (named("a"), named("a", "b")):
        result = page(source, filters, limit=50, offset=offset)
        assert result.runs == [] and result.total == (3 if len(filters) == 1 else 4)


@pytest.mark.parametrize(
    ("status", "state_types", "total"),
    [
        (JobStatus.pending, {"SCHEDULED", "PENDING", "PAUSED"}, 1),
        (JobStatus.failed, {"FAILED", "CRASHED"}, 2),
        (JobStatus.cancelled, {"CANCELLING", "CANCELLED"}, 1),
        (JobStatus.success, {"COMPLETED"}, 0),
        (None, None, 4),
    ],
)
def test_a_status_filter_queries_its_state_types(status, state_types, total):
    source = Source({"all": [run(m, t) for m, t in enumerate(["SCHEDULED", "FAILED", "CRASHED", "CANCELLED"])]})
    result = page(source, named("all"), status, limit=10, offset=0)
    assert source.state_types_read and all(read == state_types for read in source.state_types_read)
    assert result.total == total and len(result.runs) == total
    if status is not None:
        assert set(result.statuses()) <= {status}


def test_validating_and_running_are_told_apart_before_paginating():
    runs = [run(m, "RUNNING") for m in range(6)] + [run(10, "COMPLETED")]
    started = {uuid.UUID(r["id"]) for r in runs[:4]}  # the four oldest passed validation
    source = Source({"all": runs}, compile_started=started)
    running = page(source, named("all"), JobStatus.running, limit=3, offset=1)
    assert [r["id"] for r in running.runs] == [runs[2]["id"], runs[1]["id"], runs[0]["id"]]
    assert running.total == 4 and running.statuses() == [JobStatus.running] * 3
    validating = page(source, named("all"), JobStatus.validating, limit=10, offset=0)
    assert [r["id"] for r in validating.runs] == [runs[5]["id"], runs[4]["id"]] and validating.total == 2


def test_runs_without_an_expected_start_merge_last():
    undated = [{"id": str(uuid.uuid4()), "state_type": "SCHEDULED", "expected_start_time": None} for _ in range(2)]
    dated = [run(5, "COMPLETED"), run(9, "COMPLETED")]
    merged = merge_newest_first([[undated[0], dated[0]], [undated[1], dated[1]]])
    assert merged[:2] == [dated[1], dated[0]]
    assert {r["id"] for r in merged[2:]} == {r["id"] for r in undated}
