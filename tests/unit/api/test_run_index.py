"""The list index (api/run_index.py, api/run_index_sync.py) on a stand-in Prefect: when a
page may be cut from memory, and how each change Prefect does not announce (a delete, a
label PATCH on a running job) stops being served within max_age. That a real Prefect's
changes show through a real API's pages is tests/integration/test_read_model.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

from api.run_index import GROWN_ROUNDS_BEFORE_RELOAD, RunIndex
from api.run_index_sync import ListIndex
from dspy_service.contract import user_tag

ALICE, BOB = user_tag("alice"), user_tag("bob")
WALL = 2_000_000_000.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Prefect:
    """Stand-in for the gateway's run reads and counts, each counted."""

    def __init__(self) -> None:
        self.runs: dict[str, dict] = {}
        self.reads = 0
        self.counts = 0
        self.after_read = None  # called once a read has been answered

    def add(self, state: str = "COMPLETED", owner: str = ALICE, start: float = 0.0, ended: float = WALL - 3600) -> str:
        run_id = str(uuid.uuid4())
        stamp = dt.datetime.fromtimestamp(ended, dt.UTC).isoformat()
        self.runs[run_id] = {
            "id": run_id,
            "state_type": state,
            "state": {"type": state, "timestamp": stamp},
            "tags": [owner],
            "labels": {},
            "expected_start_time": dt.datetime.fromtimestamp(WALL - 86400 + start, dt.UTC).isoformat(),
        }
        return run_id

    def _matching(self, run_filter) -> list[dict]:
        if run_filter is None:
            return list(self.runs.values())
        wanted = {str(i) for i in run_filter.id.any_}
        return [run for run_id, run in self.runs.items() if run_id in wanted]

    async def read_runs(self, run_filter, sort, *, limit, offset=0):
        self.reads += 1
        runs = sorted(self._matching(run_filter), key=lambda r: r["expected_start_time"], reverse=True)
        answer = [dict(run) for run in runs[offset : offset + limit]]
        if self.after_read is not None:
            self.after_read()
        return answer

    async def count_runs(self, run_filter):
        self.counts += 1
        return len(self._matching(run_filter))


def index_on(prefect: Prefect, max_runs: int = 1000):
    clock, wall = Clock(500.0), Clock(WALL)
    index = RunIndex(max_runs, max_age=1.0, settle=10.0, clock=clock, wall_clock=wall)
    index.connected()
    return clock, wall, index, ListIndex(prefect, index)


def ids(runs) -> list[str]:
    return [run["id"] for run in runs]


def test_a_loaded_and_counted_index_serves_each_owner_their_runs_newest_first():
    prefect = Prefect()
    old, new, bobs = prefect.add(start=1), prefect.add(start=2), prefect.add(owner=BOB, start=3)
    running = prefect.add(state="RUNNING", start=4)
    _, _, index, lists = index_on(prefect)

    assert asyncio.run(lists.runs(ALICE, None)) is None  # not loaded yet: read Prefect
    asyncio.run(lists.tick())

    assert ids(asyncio.run(lists.runs(ALICE, None))) == [running, new, old]
    assert ids(asyncio.run(lists.runs(None, None))) == [running, bobs, new, old]
    assert ids(asyncio.run(lists.runs(ALICE, ["RUNNING"]))) == [running]
    assert asyncio.run(lists.runs(BOB, ["RUNNING"])) == []


def test_a_state_change_is_read_before_the_next_page():
    prefect = Prefect()
    run_id = prefect.add(state="RUNNING")
    _, _, index, lists = index_on(prefect)
    asyncio.run(lists.tick())
    assert ids(asyncio.run(lists.runs(ALICE, ["RUNNING"]))) == [run_id]
    reads = prefect.reads

    prefect.runs[run_id] |= {"state_type": "CANCELLED"}
    index.on_event(run_id, "prefect.flow-run.Cancelled")
    assert not index.servable()

    assert ids(asyncio.run(lists.runs(ALICE, ["CANCELLED"]))) == [run_id]
    assert prefect.reads == reads + 1  # the page waited on one read: the event's run
    assert asyncio.run(lists.runs(ALICE, ["RUNNING"])) == []  # no page kept from before


def test_a_new_run_is_listed_once_its_event_arrives_and_heartbeats_change_nothing():
    prefect = Prefect()
    first = prefect.add()
    _, _, index, lists = index_on(prefect)
    asyncio.run(lists.tick())

    index.on_event(first, "prefect.flow-run.heartbeat")
    assert index.servable()
    second = prefect.add(state="SCHEDULED", start=5)
    index.on_event(second, "prefect.flow-run.Scheduled")
    assert ids(asyncio.run(lists.runs(ALICE, None))) == [second, first]


def test_an_event_during_the_refresh_read_keeps_its_run_due():
    prefect = Prefect()
    run_id = prefect.add(state="RUNNING")
    _, _, index, lists = index_on(prefect)
    asyncio.run(lists.tick())
    index.on_event(run_id, "prefect.flow-run.Cancelling")
    prefect.after_read = lambda: index.on_event(run_id, "prefect.flow-run.Cancelled")

    assert asyncio.run(lists.runs(ALICE, None)) is None  # the read may predate the second change
    prefect.after_read = None
    prefect.runs[run_id] |= {"state_type": "CANCELLED"}
    assert ids(asyncio.run(lists.runs(ALICE, ["CANCELLED"]))) == [run_id]


def test_a_delete_made_in_prefect_stops_being_served_within_max_age_and_is_found():
    prefect = Prefect()
    kept = [prefect.add(start=i) for i in range(120)]
    clock, _, index, lists = index_on(prefect)
    asyncio.run(lists.tick())
    gone = kept[37]
    del prefect.runs[gone]

    clock.now += 0.9  # the last count is still within max_age: served, as the 1 s rule allows
    assert gone in ids(asyncio.run(lists.runs(ALICE, None)))
    clock.now += 0.2  # older than max_age and not counted again: read Prefect
    assert asyncio.run(lists.runs(ALICE, None)) is None

    asyncio.run(lists.tick())  # the count finds one missing; counts over chunks find which
    assert len(index) == 119 and gone not in index.held_ids()
    assert prefect.reads < 10  # narrowed by counts, not by reading every run
    asyncio.run(lists.tick())  # the next count matches again
    assert ids(asyncio.run(lists.runs(ALICE, None))) == [r for r in reversed(kept) if r != gone]


def test_a_running_jobs_labels_are_reread_once_older_than_max_age_and_settled_runs_never():
    prefect = Prefect()
    running = prefect.add(state="RUNNING")
    for i in range(50):
        prefect.add(start=i)
    clock, _, index, lists = index_on(prefect)
    asyncio.run(lists.tick())

    prefect.runs[running]["labels"] = {"dspy.progress": "0.5"}  # a label PATCH: no event
    clock.now += 1.1
    asyncio.run(lists.tick())
    reads = prefect.reads
    page = asyncio.run(lists.runs(ALICE, ["RUNNING"]))
    assert page[0]["labels"] == {"dspy.progress": "0.5"}
    assert prefect.reads == reads  # the round kept it fresh: the page waited on nothing
    assert index.due(-1.0, limit=100).marks.keys() == {running}  # finished long ago: never re-read


def test_a_run_that_just_ended_is_reread_until_it_settles():
    prefect = Prefect()
    ended = prefect.add(state="COMPLETED", ended=WALL - 2)
    _, wall, index, lists = index_on(prefect)
    asyncio.run(lists.tick())
    assert set(index.due(-1.0, limit=10).marks) == {ended}
    wall.now += 9
    assert not index.due(-1.0, limit=10).marks  # ten seconds after its end nothing writes it


def test_a_reconnect_empties_the_index_and_it_loads_again():
    prefect = Prefect()
    prefect.add()
    _, _, index, lists = index_on(prefect)
    asyncio.run(lists.tick())
    index.disconnected()
    assert asyncio.run(lists.runs(ALICE, None)) is None
    index.connected()
    assert asyncio.run(lists.runs(ALICE, None)) is None and not index.loaded
    asyncio.run(lists.tick())
    assert len(asyncio.run(lists.runs(ALICE, None))) == 1


def test_more_runs_than_it_may_hold_read_prefect():
    prefect = Prefect()
    for i in range(5):
        prefect.add(start=i)
    _, _, index, lists = index_on(prefect, max_runs=4)
    asyncio.run(lists.tick())
    assert index.too_many and not index.loaded
    assert asyncio.run(lists.runs(ALICE, None)) is None


def test_runs_the_index_missed_make_it_reload():
    prefect = Prefect()
    prefect.add()
    _, _, index, lists = index_on(prefect)
    asyncio.run(lists.tick())
    missed = prefect.add(start=3)  # created with no event (as if missed)
    outcomes = [asyncio.run(lists.verify()) for _ in range(GROWN_ROUNDS_BEFORE_RELOAD)]
    assert outcomes[-1] == "reload" and not index.loaded
    asyncio.run(lists.tick())
    assert missed in ids(asyncio.run(lists.runs(ALICE, None)))


def test_this_processes_own_writes_show_at_once():
    prefect = Prefect()
    run_id = prefect.add(state="RUNNING")
    _, _, index, lists = index_on(prefect)
    asyncio.run(lists.tick())
    prefect.runs[run_id] |= {"state_type": "CANCELLING"}
    index.forget(run_id)  # the API's cancel
    assert ids(asyncio.run(lists.runs(ALICE, ["CANCELLING"]))) == [run_id]
    index.remove(run_id)  # the API's delete
    del prefect.runs[run_id]
    assert asyncio.run(lists.runs(ALICE, None)) == []


def test_off_at_size_zero():
    prefect = Prefect()
    prefect.add()
    _, _, index, lists = index_on(prefect, max_runs=0)
    asyncio.run(lists.tick())
    assert asyncio.run(lists.runs(ALICE, None)) is None


def test_the_read_models_subscription_feeds_the_index():
    from contextlib import asynccontextmanager

    from api.run_cache import RunCache
    from api.run_events import RunReadModel

    class Event:
        def __init__(self, run_id: str, name: str) -> None:
            self.resource = type("Resource", (), {"id": f"prefect.flow-run.{run_id}"})()
            self.event = name

    async def scenario():
        prefect = Prefect()
        run_id = prefect.add(state="RUNNING")
        _, _, index, lists = index_on(prefect)
        index.disconnected()
        queue: asyncio.Queue = asyncio.Queue()

        @asynccontextmanager
        async def subscribe():
            async def events():
                while True:
                    yield await queue.get()

            yield events()

        reads = RunReadModel(prefect, RunCache(10, 1.0), subscribe=subscribe, index=index)
        listener = asyncio.create_task(reads.listen_forever())
        await asyncio.sleep(0.01)
        assert index.live
        await lists.tick()
        assert index.servable()
        queue.put_nowait(Event(run_id, "prefect.flow-run.heartbeat"))
        await asyncio.sleep(0.01)
        assert index.servable()
        queue.put_nowait(Event(run_id, "prefect.flow-run.Cancelling"))
        await asyncio.sleep(0.01)
        assert not index.servable()
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        assert not index.live and not index.loaded

    asyncio.run(scenario())


def test_after_a_quiet_spell_a_page_waits_on_one_count_only():
    prefect = Prefect()
    for i in range(20):
        prefect.add(start=i)
    clock, _, index, lists = index_on(prefect)
    asyncio.run(lists.tick())
    clock.now += 60  # no page asked, no round run: the last count is long past
    counts, reads = prefect.counts, prefect.reads
    assert len(asyncio.run(lists.runs(ALICE, None))) == 20
    assert (prefect.counts, prefect.reads) == (counts + 1, reads)


def test_runs_sharing_a_start_time_are_ordered_by_id_on_every_replica():
    prefect = Prefect()
    tied = [prefect.add(start=7) for _ in range(5)]
    for replica in range(2):
        _, _, _, lists = index_on(prefect)
        asyncio.run(lists.tick())
        assert ids(asyncio.run(lists.runs(ALICE, None))) == sorted(tied, reverse=True), replica
