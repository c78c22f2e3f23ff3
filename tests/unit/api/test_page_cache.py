"""GET /jobs pages kept a moment (api/page_cache.py): when a kept page may be served, and
that a page is only ever served to a query of the same owner. That a real Prefect's events
and deletes show in a real API's lists is tests/integration/test_read_model.py."""

from __future__ import annotations

import asyncio
import uuid

from api.gateway import JobGateway
from api.page_cache import PageCache
from api.run_cache import RunCache
from api.run_pages import RunPage
from api.status import JobStatus
from dspy_service.settings import ServiceSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def page_of(n: int) -> RunPage:
    return RunPage([{"id": str(uuid.uuid4())} for _ in range(n)], set(), n)


def live_cache(clock: Clock, max_age: float = 1.0) -> RunCache:
    runs = RunCache(size=100, max_age=max_age, clock=clock)
    runs.connected()
    return runs


def test_a_page_is_served_until_anything_changes_or_it_is_older_than_max_age():
    clock = Clock()
    runs = live_cache(clock)
    pages = PageCache(runs)
    page = page_of(3)
    assert pages.store("k", page, runs.token()) and pages.fresh("k") is page
    clock.now += 0.9
    assert pages.fresh("k") is page
    clock.now += 0.2  # read 1.1 s ago: a delete made elsewhere may have happened unseen
    assert pages.fresh("k") is None

    for change in (lambda: runs.on_event(f"prefect.flow-run.{uuid.uuid4()}"),  # any run's event
                   lambda: runs.forget(str(uuid.uuid4())),  # this replica's write
                   runs.connected):  # a reconnect: events may have been missed
        assert pages.store("k", page, runs.token()) and pages.fresh("k") is page
        change()
        assert pages.fresh("k") is None
    runs.on_event("prefect.deployment.x")  # not a flow run's: changes nothing
    assert pages.store("k", page, runs.token()) and pages.fresh("k") is page


def test_a_read_that_overlapped_a_change_or_a_down_subscription_is_not_kept():
    clock = Clock()
    runs = live_cache(clock)
    pages = PageCache(runs)
    token = runs.token()
    runs.on_event(f"prefect.flow-run.{uuid.uuid4()}")  # arrives while the page is read
    assert not pages.store("k", page_of(2), token) and pages.fresh("k") is None
    runs.disconnected()
    assert not pages.store("k", page_of(2), runs.token())
    off = RunCache(size=0, max_age=1.0, clock=clock)  # the read model switched off
    off.connected()
    assert not PageCache(off).store("k", page_of(2), off.token())


def test_pages_hold_at_most_max_runs_in_all_least_recently_served_out_first():
    runs = live_cache(Clock())
    pages = PageCache(runs, max_runs=10)
    first, second = page_of(4), page_of(4)
    pages.store("a", first, runs.token())
    pages.store("b", second, runs.token())
    assert pages.fresh("a") is first  # now the most recently served
    pages.store("c", page_of(4), runs.token())
    assert pages.fresh("b") is None and pages.fresh("a") is first
    assert not pages.store("huge", page_of(11), runs.token())


class ListingGateway(JobGateway):
    """The gateway's list over a stand-in read: one page per owner, each read counted."""

    def __init__(self) -> None:
        super().__init__(client=None, settings=ServiceSettings())
        self.run_cache.connected()
        self.reads: list[str | None] = []

    async def read_runs(self, run_filter, sort, *, limit, offset=0):
        owner = run_filter.tags.all_[0] if run_filter.tags else None
        self.reads.append(owner)
        return [{"id": str(uuid.uuid4()), "state_type": "COMPLETED", "tags": [owner]}]

    async def count_runs(self, run_filter):
        return 1

    async def compile_started(self, runs):
        return set()


def test_a_kept_page_is_served_only_to_a_query_of_the_same_owner_and_filter():
    gateway = ListingGateway()

    def listed(owner: str | None, status: JobStatus | None = None) -> list[str]:
        page = asyncio.run(gateway.list(status=status, username=owner, limit=50, offset=0))
        return page.runs[0]["tags"]

    assert listed("alice") == listed("alice") == ["user:alice"]
    assert listed("mallory") == ["user:mallory"]
    assert listed(None) == [None] and listed("alice", JobStatus.success) == ["user:alice"]
    assert gateway.reads == ["user:alice", "user:mallory", None, "user:alice"]
