"""The read model of job runs (api/run_cache.py, api/run_events.py) on a stand-in gateway and
event stream: hits, misses, events, the reconcile, a subscription that drops. That a real
Prefect's events and deletes show through a real API is tests/integration/test_read_model.py."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import asynccontextmanager

from api.run_cache import HOT_SECONDS, RunCache, run_id_of_resource
from api.run_events import RunReadModel


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Prefect:
    """Stand-in for the gateway's reads: runs by id, each read counted."""

    def __init__(self) -> None:
        self.runs: dict[str, dict] = {}
        self.gets = 0
        self.filters = 0
        self.gate: asyncio.Event | None = None  # when set, reads wait on it

    def add(self, state: str = "RUNNING", owner: str = "alice") -> str:
        run_id = str(uuid.uuid4())
        self.runs[run_id] = {"id": run_id, "state_type": state, "tags": [f"user:{owner}"]}
        return run_id

    async def get(self, job_id: str):
        self.gets += 1
        found = self.runs.get(job_id)
        snapshot = dict(found) if found else None
        if self.gate is not None:
            await self.gate.wait()
        return snapshot

    async def read_runs(self, run_filter, sort, *, limit, offset=0):
        self.filters += 1
        wanted = {str(i) for i in run_filter.id.any_}
        return [dict(run) for run_id, run in self.runs.items() if run_id in wanted][:limit]


def model(size: int = 100, max_age: float = 1.0):
    clock, prefect = Clock(), Prefect()
    cache = RunCache(size, max_age, clock=clock)
    return clock, prefect, cache, RunReadModel(prefect, cache)


def test_only_flow_run_resources_name_a_run():
    run_id = str(uuid.uuid4())
    assert run_id_of_resource(f"prefect.flow-run.{run_id}") == run_id
    assert run_id_of_resource(f"prefect.task-run.{run_id}") is None
    assert run_id_of_resource("prefect.flow-run.") is None


def test_a_miss_reads_through_once_then_hits_until_max_age():
    async def scenario():
        clock, prefect, cache, reads = model()
        cache.connected()
        run_id = prefect.add()
        assert (await reads.get(run_id))["id"] == run_id
        assert (await reads.get(run_id.upper()))["id"] == run_id  # one key per run, however spelled
        assert prefect.gets == 1 and cache.hits == 1
        clock.now += 1.01  # older than max_age: read again
        await reads.get(run_id)
        assert prefect.gets == 2
        assert await reads.get("not-a-uuid") is None and prefect.gets == 2

    asyncio.run(scenario())


def test_an_event_drops_the_entry_so_the_change_shows_on_the_next_read():
    async def scenario():
        _, prefect, cache, reads = model()
        cache.connected()
        run_id = prefect.add("RUNNING")
        await reads.get(run_id)
        prefect.runs[run_id]["state_type"] = "CANCELLED"  # the Prefect UI cancels it
        assert (await reads.get(run_id))["state_type"] == "RUNNING"  # no event yet: within max_age
        cache.on_event(f"prefect.flow-run.{run_id}")
        assert (await reads.get(run_id))["state_type"] == "CANCELLED"
        other = prefect.add()
        await reads.get(other)
        cache.on_event(f"prefect.task-run.{other}")  # not a flow run's: kept
        assert prefect.gets == 3 and (await reads.get(other)) and prefect.gets == 3

    asyncio.run(scenario())


def test_a_read_overlapping_an_event_is_served_but_not_kept():
    async def scenario():
        _, prefect, cache, reads = model()
        cache.connected()
        run_id = prefect.add("RUNNING")
        prefect.gate = asyncio.Event()
        pending = asyncio.create_task(reads.get(run_id))
        await asyncio.sleep(0)  # the read has taken its snapshot: RUNNING
        prefect.runs[run_id]["state_type"] = "CANCELLED"
        cache.on_event(f"prefect.flow-run.{run_id}")
        prefect.gate.set()
        assert (await pending)["state_type"] == "RUNNING"
        prefect.gate = None
        assert len(cache) == 0
        assert (await reads.get(run_id))["state_type"] == "CANCELLED"

    asyncio.run(scenario())


def test_own_writes_drop_the_entry_and_refuse_reads_started_before_them():
    async def scenario():
        _, prefect, cache, reads = model()
        cache.connected()
        run_id = prefect.add()
        await reads.get(run_id)
        token = cache.token()
        cache.forget(run_id)  # this replica cancelled it
        assert len(cache) == 0
        assert not cache.store(run_id, {"id": run_id}, token)

    asyncio.run(scenario())


def test_while_the_subscription_is_down_every_read_goes_to_prefect():
    async def scenario():
        _, prefect, cache, reads = model()
        run_id = prefect.add()
        for _ in range(3):  # never connected
            await reads.get(run_id)
        assert prefect.gets == 3 and len(cache) == 0
        cache.connected()
        await reads.get(run_id)
        await reads.get(run_id)
        assert prefect.gets == 4
        cache.disconnected()  # the stream drops: what was kept may miss events
        assert len(cache) == 0
        await reads.get(run_id)
        await reads.get(run_id)
        assert prefect.gets == 6
        token = cache.token()
        cache.connected()  # a read begun before a reconnect is not kept either
        assert not cache.store(run_id, {"id": run_id}, token)

    asyncio.run(scenario())


def test_the_reconcile_rereads_served_entries_and_drops_deleted_runs():
    async def scenario():
        clock, prefect, cache, reads = model(max_age=0.9)
        cache.connected()
        kept, deleted, relabeled = prefect.add(), prefect.add(), prefect.add()
        for run_id in (kept, deleted, relabeled):
            await reads.get(run_id)
        assert await reads.reconcile_once() == 0  # all read just now
        del prefect.runs[deleted]  # deleted in the Prefect UI: no event
        prefect.runs[relabeled]["labels"] = {"progress": 3}  # a label PATCH: no event
        clock.now += 0.31
        assert await reads.reconcile_once() == 3 and prefect.filters == 1
        assert len(cache) == 2
        gets = prefect.gets
        assert (await reads.get(relabeled))["labels"] == {"progress": 3}
        assert await reads.get(kept) is not None and prefect.gets == gets  # both refreshed: hits
        assert await reads.get(deleted) is None

    asyncio.run(scenario())


def test_entries_not_served_lately_leave_and_memory_is_bounded():
    async def scenario():
        clock, prefect, cache, reads = model(size=3)
        cache.connected()
        ids = [prefect.add() for _ in range(5)]
        for run_id in ids:
            await reads.get(run_id)
        assert len(cache) == 3  # least recently used went
        clock.now += HOT_SECONDS + 1
        assert await reads.reconcile_once() == 0 and len(cache) == 0

    asyncio.run(scenario())


def test_size_zero_is_off():
    async def scenario():
        _, prefect, cache, reads = model(size=0)
        cache.connected()
        run_id = prefect.add()
        await reads.get(run_id)
        await reads.get(run_id)
        assert prefect.gets == 2 and len(cache) == 0

    asyncio.run(scenario())


class Event:
    def __init__(self, resource_id: str) -> None:
        self.resource = type("Resource", (), {"id": resource_id})()


def test_the_listener_applies_events_and_reads_through_after_the_stream_fails():
    async def scenario():
        _, prefect, cache, _ = model()
        run_id = prefect.add()
        queue: asyncio.Queue = asyncio.Queue()
        attempts = []

        @asynccontextmanager
        async def subscribe():
            attempts.append(1)
            if len(attempts) == 2:
                raise ConnectionError("refused")

            async def events():
                while True:
                    item = await queue.get()
                    if isinstance(item, Exception):
                        raise item
                    yield item

            yield events()

        async def no_wait(_):
            await asyncio.sleep(0)

        reads = RunReadModel(prefect, cache, subscribe=subscribe, sleep=no_wait)
        listener = asyncio.create_task(reads.listen_forever())
        await asyncio.sleep(0.01)
        assert cache.live
        await reads.get(run_id)
        assert len(cache) == 1
        queue.put_nowait(Event(f"prefect.flow-run.{run_id}"))
        await asyncio.sleep(0.01)
        assert len(cache) == 0
        await reads.get(run_id)
        queue.put_nowait(ConnectionError("stream dropped"))
        await asyncio.sleep(0.05)
        # Dropped, refused once, then back: the kept entry went with the first drop.
        assert len(attempts) == 3 and cache.live and len(cache) == 0
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        assert not cache.live

    asyncio.run(scenario())


def test_a_kept_run_is_shown_to_its_owner_only():
    """GET /jobs/{id} and /summary take the run from the read model and check its owner
    by the same code as every job route: another user's id answers 404."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from api.gateway import JobGateway
    from api.identity import Caller, current_user
    from api.routes import jobs
    from dspy_service.settings import ServiceSettings

    _, prefect, cache, reads = model()
    cache.connected()
    run_id = prefect.add("CANCELLED", owner="alice")
    app = FastAPI()
    app.include_router(jobs.router)
    app.state.gateway = JobGateway(client=None, settings=ServiceSettings())
    app.state.read_model = reads
    caller = {"who": Caller("alice", admin=False)}
    app.dependency_overrides[current_user] = lambda: caller["who"]
    api = TestClient(app)
    assert api.get(f"/jobs/{run_id}/summary").json()["status"] == "cancelled"
    assert len(cache) == 1 and prefect.gets == 1
    caller["who"] = Caller("mallory", admin=False)
    for path in ("/jobs/{}", "/jobs/{}/summary"):
        assert api.get(path.format(run_id)).status_code == 404  # kept, but not theirs
    assert prefect.gets == 1
    caller["who"] = Caller("root", admin=True)
    assert api.get(f"/jobs/{run_id}/summary").status_code == 200
