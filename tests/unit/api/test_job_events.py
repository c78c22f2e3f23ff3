"""The job event stream without Prefect: cursors, the order of states and logs, the settle
rule, the final event, and a simulated run whose logs commit out of order, read live,
dropped, resumed and read again whole (api/event_cursor.py, api/job_events.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from api import event_cursor as ec
from api.deps import get_job_run
from api.gateway import Outcome
from api.identity import Caller, current_user
from api.job_events import EventFollower, event_stream, sse
from api.main import create_app
from api.prefect_reads import read_logs_since
from api.status import JobStatus
from dspy_service import contract
from dspy_service.settings import ServiceSettings, get_settings

T0 = dt.datetime(2026, 12, 3, 8, 0, 0, tzinfo=dt.UTC)
RUN_ID = str(uuid.UUID(int=7))


def iso(seconds: float) -> str:
    return (T0 + dt.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def state(seconds: float, state_type: str, name: str | None = None, message: str | None = None) -> dict:
    return {
        "id": str(uuid.uuid4()),
        "type": state_type,
        "name": name or state_type.capitalize(),
        "timestamp": iso(seconds),
        "message": message,
    }


def log(created: float, message: str, *, written: float | None = None, name: str = "dspy") -> dict:
    return {
        "id": str(uuid.uuid4()),
        "created": iso(created),
        "timestamp": iso(created - 0.4 if written is None else written),
        "name": name,
        "level": 20,
        "message": message,
    }


def progress(created: float, n: int) -> dict:
    event = {"timestamp": iso(created), "event": "progress", "metrics": {"tqdm_n": n}}
    return log(created, contract.encode_progress(event), name=contract.PROGRESS_LOGGER)


# -- cursors ---------------------------------------------------------------------------------
def test_a_cursor_round_trips_and_is_printable_without_spaces():
    position = ec.Position(1_764_748_800_123_456, ec.RANK_LOG, 1_764_748_799_000_001, uuid.uuid4().hex)
    text = ec.encode_cursor(position)
    assert text.isprintable() and " " not in text
    assert ec.decode_cursor(text) == position
    assert ec.decode_cursor(None) == ec.decode_cursor("") == ec.decode_cursor("  ") == ec.START


@pytest.mark.parametrize(
    "text",
    [
        "garbage",
        "1.2.3",
        "2.1.0.0." + "0" * 32,
        "1.1.3.0." + "0" * 32,
        "1.1.1.0." + "g" * 32,
        "1.-1.1.0." + "0" * 32,
        "1.1.1.0." + "0" * 31,
        "1.1.1.0." + "0" * 32 + ".x",
        "1." + "9" * 20 + ".1.0." + "0" * 32,
    ],
)
def test_a_malformed_cursor_is_refused(text):
    with pytest.raises(ec.CursorError, match="Last-Event-ID"):
        ec.decode_cursor(text)


def test_times_read_either_utc_spelling():
    assert ec.micros("2026-12-03T08:00:00.000001Z") == ec.micros("2026-12-03T08:00:00.000001+00:00")
    assert ec.from_micros(ec.micros(iso(1.5))) == T0 + dt.timedelta(seconds=1.5)


# -- items -------------------------------------------------------------------------------------
def test_states_become_status_events_in_the_users_terms():
    running = ec.state_item(state(1, "RUNNING"))
    assert running.type == "status" and running.data["status"] == "validating" and running.data["message"] is None
    resumed = ec.state_item(state(5, "RUNNING"), compile_us=ec.micros(iso(3)))
    assert resumed.data["status"] == "running", "a Running state after the compile task started is running"
    crashed = ec.state_item(state(2, "CRASHED", message="Process exited with status code: -9")).data
    assert crashed["status"] == "failed" and crashed["message"].startswith("the job process was killed (SIGKILL)")
    assert crashed["timestamp"] == "2026-12-03T08:00:02+00:00"
    done = ec.state_item(state(3, "COMPLETED", message="All states completed.")).data
    assert done == {"status": "success", "prefect_state": "Completed", "timestamp": done["timestamp"], "message": None}


def test_logs_become_log_or_progress_events_as_the_api_shows_them():
    entry = ec.log_item(log(5, "hello"))
    assert entry.type == "log" and entry.data["message"] == "hello" and entry.data["level"] == "INFO"
    assert entry.position.time_us == ec.micros(iso(5)), "ordered by the server's receipt, not the writer's time"
    event = ec.log_item(progress(6, 3))
    assert event.type == "progress" and event.data["metrics"] == {"tqdm_n": 3}


def test_a_log_shipped_long_after_it_was_written_is_not_streamed():
    assert not ec.shipped_late(log(200, "x", written=200 - ec.LOG_LOOKBACK_SECONDS + 1))
    assert ec.shipped_late(log(200, "x", written=200 - ec.LOG_LOOKBACK_SECONDS - 1))


def test_the_final_event_follows_a_terminal_state_after_the_grace():
    assert ec.final_item(state(3, "RUNNING")) is None and ec.final_item(state(3, "CANCELLING")) is None
    final = ec.final_item(state(3, "FAILED"))
    assert final.type == "final" and final.position.time_us == ec.micros(iso(3 + ec.FINAL_GRACE_SECONDS))
    assert ec.final_event_type(JobStatus.success) == "result"
    assert {ec.final_event_type(s) for s in (JobStatus.failed, JobStatus.cancelled)} == {"error"}


# -- what is due -----------------------------------------------------------------------------
def items_at(*entries) -> list[ec.Item]:
    return [ec.state_item(e) if "type" in e else ec.log_item(e) for e in entries]


def test_due_orders_states_before_logs_of_the_same_time_and_a_batch_by_its_writing():
    a, b = log(5, "a", written=1), log(5, "b", written=2)
    s = state(5, "RUNNING")
    items = items_at(b, a, s, log(4, "earlier"))
    sent = ec.due(items, ec.START, ec.micros(iso(10)))
    assert [i.data.get("message") or i.data["status"] for i in sent] == ["earlier", "validating", "a", "b"]


def test_the_compile_task_makes_a_validating_job_running_at_its_rows_time():
    task_run = {"id": str(uuid.uuid4()), "created": iso(3.5), "name": "compile-program"}
    item = ec.compile_item(task_run)
    assert item.type == "status" and item.data["status"] == "running" and item.position.rank == ec.RANK_STATE
    sent = ec.due(
        [item, *items_at(state(2, "RUNNING"), log(3, "setup"), log(4, "compiling"))], ec.START, ec.micros(iso(9))
    )
    assert [i.data.get("message") or i.data["status"] for i in sent] == ["validating", "setup", "running", "compiling"]


def test_due_holds_back_what_has_not_settled():
    items = items_at(log(4, "old"), log(9, "young"))
    cutoff = ec.micros(iso(9))
    assert [i.data["message"] for i in ec.due(items, ec.START, cutoff)] == ["old"], "strictly before the cutoff"
    assert ec.cutoff_us(T0 + dt.timedelta(seconds=10)) == ec.micros(iso(10 - ec.SETTLE_SECONDS))


def test_due_resumes_after_the_cursor():
    items = items_at(log(1, "a"), log(2, "b"), log(3, "c"))
    cursor = items[1].position
    assert [i.data["message"] for i in ec.due(items, cursor, ec.micros(iso(10)))] == ["c"]


def test_due_ends_with_the_final_event_and_resends_only_it():
    end = state(5, "COMPLETED")
    items = [*items_at(log(4, "before"), log(6, "in the grace"), log(8, "too late"), end), ec.final_item(end)]
    sent = ec.due(items, ec.START, ec.micros(iso(20)))
    assert [i.type for i in sent] == ["log", "status", "log", "final"]
    assert ec.due(items, ec.START, ec.micros(iso(7))) == sent[:3], "the final waits for the grace to settle"
    assert ec.due(items, sent[-1].position, ec.micros(iso(20))) == [sent[-1]]
    beyond = ec.Position(sent[-1].position.time_us + 1, ec.RANK_FINAL)
    assert ec.due(items, beyond, ec.micros(iso(20))) == [sent[-1]]


def test_sse_lines():
    assert sse("log", {"message": "a\nb"}, "1.2") == 'id: 1.2\nevent: log\ndata: {"message":"a\\nb"}\n\n'
    assert sse("usage", {"calls": 1}) == 'event: usage\ndata: {"calls":1}\n\n'


# -- a simulated run ----------------------------------------------------------------------------
class World:
    """Prefect as a reader sees it at time `now`: rows become visible some time after
    their stamp (their transaction commits later), within the settle delay."""

    def __init__(self) -> None:
        self.now = 0.5  # the run exists with its first state
        self.state_rows: list[tuple[float, dict]] = []  # (visible at, state)
        self.logs: list[tuple[float, dict]] = []
        self.usage: list[tuple[float, dict]] = []
        self.compile_rows: list[tuple[float, dict]] = []
        self.deleted_at: float | None = None
        self.settings = ServiceSettings()

    def clock(self) -> dt.datetime:
        return T0 + dt.timedelta(seconds=self.now)

    def visible(self, rows):
        return [row for at, row in rows if at <= self.now]

    def run(self) -> dict:
        states = sorted(self.visible(self.state_rows), key=lambda s: s["timestamp"])
        usage = self.visible(self.usage)
        labels = {contract.USAGE: json.dumps(usage[-1])} if usage else {}
        last = states[-1]
        return {"id": RUN_ID, "state": last, "state_type": last["type"], "state_name": last["name"], "labels": labels}

    async def get(self, run_id: str):
        return None if self.deleted_at is not None and self.now >= self.deleted_at else self.run()

    async def states(self, run_id):
        return sorted(self.visible(self.state_rows), key=lambda s: s["timestamp"])

    async def compile_task(self, run_id):
        rows = self.visible(self.compile_rows)
        return rows[0] if rows else None

    async def logs_since(self, run_id, since):
        rows = self.visible(self.logs)
        return [r for r in rows if since is None or dt.datetime.fromisoformat(r["timestamp"]) >= since]

    async def outcome(self, run):
        status = {"COMPLETED": JobStatus.success, "FAILED": JobStatus.failed}[run["state"]["type"]]
        return Outcome(status, None, "boom" if status is JobStatus.failed else None)


def job_world(end: str = "COMPLETED") -> World:
    world = World()
    for at, kind in ((0, "SCHEDULED"), (1, "PENDING"), (2, "RUNNING"), (20, end)):
        world.state_rows.append((at + 0.3, state(at, kind)))
    for i in range(40):
        created = 2.1 + i * 0.4
        commit_delay = (0.9, 0.1, 0.6, 1.2)[i % 4]  # later-stamped rows commit first, sometimes
        row = progress(created, i) if i % 3 == 0 else log(created, f"line {i}", written=created - (i % 5))
        world.logs.append((created + commit_delay, row))
    world.logs.append((21.0, log(20.5, "flushed at exit")))
    world.logs.append((22.5, log(21.9, "worker's last word")))
    world.logs.append((26.0, log(25.0, "after the grace")))
    world.logs.append((10.0, log(9.5, "shipped late", written=9.5 - 500)))
    world.usage = [(5.0, {"calls": 3}), (12.0, {"calls": 9}), (21.0, {"calls": 12})]
    world.compile_rows.append((4.4, {"id": str(uuid.uuid4()), "created": iso(4.0), "name": "compile-program"}))
    return world


def follow(world: World, after: ec.Position, until: float, stop_after: int | None = None) -> tuple[list[str], bool]:
    follower = EventFollower(world, {"id": RUN_ID}, after, clock=world.clock)
    sent: list[str] = []
    while world.now <= until:
        chunks, over = asyncio.run(follower.poll())
        sent.extend(chunks)
        if over:
            return sent, True
        if stop_after is not None and len([c for c in sent if c.startswith("id:")]) >= stop_after:
            return sent, False
        world.now += 0.5
    return sent, False


def resumable(chunks: list[str]) -> list[str]:
    return [c for c in chunks if c.startswith("id:")]


def last_id(chunks: list[str]) -> str:
    return resumable(chunks)[-1].split("\n", 1)[0].removeprefix("id: ")


@pytest.mark.parametrize("drop_after", [1, 5, 17, 30, 44])
def test_a_dropped_stream_resumed_from_its_last_id_loses_and_repeats_nothing(drop_after):
    world = job_world()
    first, over = follow(world, ec.START, until=60, stop_after=drop_after)
    assert not over
    world.now += 3.0  # the client reconnects a little later (on any replica)
    second, over = follow(world, ec.decode_cursor(last_id(first)), until=60)
    assert over
    world.now = 60  # the same run read whole from the start after it ended
    whole, over = follow(world, ec.START, until=60)
    assert over
    assert resumable(first) + resumable(second) == resumable(whole)
    world.now = 0.5  # and read live from its start without a break
    live, _ = follow(world, ec.START, until=60)
    assert resumable(live) == resumable(whole)
    events = [c.split("\n")[1] for c in resumable(whole)]
    assert events[-1] == "event: result" and events.count("event: status") == 5
    statuses = [json.loads(c.split("data: ")[1])["status"] for c in resumable(whole) if "event: status" in c]
    assert statuses == ["pending", "pending", "validating", "running", "success"]
    text = "".join(whole)
    assert "flushed at exit" in text and "worker's last word" in text
    assert "after the grace" not in text and "shipped late" not in text
    ns = [json.loads(c.split("data: ")[1])["metrics"]["tqdm_n"] for c in whole if "event: progress" in c]
    assert ns == sorted(ns) and len(ns) == 14


def test_usage_is_sent_on_connect_and_when_it_changes_without_an_id():
    world = job_world()
    world.now = 6
    chunks, _ = follow(world, ec.START, until=60)
    usage = [c for c in chunks if "event: usage" in c]
    assert [json.loads(c.split("data: ")[1])["calls"] for c in usage] == [3, 9, 12]
    assert not any(c.startswith("id:") for c in usage)
    assert chunks.index(usage[-1]) < len(chunks) - 1, "the final usage comes before the final event"


def test_resuming_after_the_end_sends_the_final_event_again_and_only_it():
    world = job_world("FAILED")
    whole, _ = follow(world, ec.START, until=60)
    assert whole[-1].split("\n")[1] == "event: error" and json.loads(whole[-1].split("data: ")[1])["message"] == "boom"
    again, over = follow(world, ec.decode_cursor(last_id(whole)), until=80)
    assert over and resumable(again) == [whole[-1]]


def test_a_deleted_job_ends_the_stream():
    world = job_world()
    world.deleted_at = 8
    chunks, over = follow(world, ec.START, until=60)
    assert over and "event: result" not in "".join(chunks)


def test_the_stream_closes_on_disconnect_and_sends_keepalives():
    class Client:
        checks = 0

        async def is_disconnected(self) -> bool:
            self.checks += 1
            return self.checks > 3

    class Quiet:
        run_id = RUN_ID

        async def poll(self):
            return [], False

    async def body():
        return [chunk async for chunk in event_stream(Client(), Quiet(), heartbeat_seconds=0, poll_seconds=0)]

    chunks = asyncio.run(body())
    assert chunks == ["retry: 2000\n\n"] + [": keepalive\n\n"] * 3


# -- the route -----------------------------------------------------------------------------------
@pytest.fixture
def api():
    get_settings.cache_clear()
    world = job_world()
    world.now = 100.0
    app = create_app()
    app.state.gateway = world
    app.dependency_overrides[current_user] = lambda: Caller("tester", admin=False)
    app.dependency_overrides[get_job_run] = lambda: world.run()
    yield TestClient(app)
    get_settings.cache_clear()


def test_a_malformed_last_event_id_is_a_400_naming_the_header(api):
    for request in ({"headers": {"Last-Event-ID": "nope"}}, {"params": {"last_event_id": "1.2"}}):
        response = api.get(f"/jobs/{RUN_ID}/events", **request)
        assert response.status_code == 400, response.text
        assert response.json()["field"] == "Last-Event-ID" and "Last-Event-ID" in response.json()["detail"]


def test_the_route_streams_a_finished_job_to_its_end(api):
    with api.stream("GET", f"/jobs/{RUN_ID}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        body = "".join(response.iter_text())
    assert body.startswith("retry: 2000\n\n") and body.rstrip().split("\n")[-2] == "event: result"
    final_id = body.rstrip().split("\n\n")[-1].split("\n")[0].removeprefix("id: ")
    again = api.get(f"/jobs/{RUN_ID}/events", headers={"Last-Event-ID": final_id}).text
    assert again.count("event: result") == 1 and "event: log" not in again


# -- reading logs in pages ------------------------------------------------------------------------
class LogServer:
    """POST /logs/filter as Prefect answers it: sorted by timestamp alone, ties in any order
    (a different one per query, as PostgreSQL may), `after_` inclusive, limit and offset."""

    def __init__(self, logs: list[dict]) -> None:
        self.logs = logs
        self.queries = 0

    async def request(self, method: str, path: str, json: dict) -> Any:
        import random

        self.queries += 1
        after = (json["logs"].get("timestamp") or {}).get("after_")
        rows = [r for r in self.logs if after is None or ec.micros(r["timestamp"]) >= ec.micros(after)]
        random.Random(self.queries).shuffle(rows)
        rows.sort(key=lambda r: ec.micros(r["timestamp"]))
        page = rows[json["offset"] : json["offset"] + json["limit"]]
        return type("Response", (), {"content": orjson.dumps(page)})()


@pytest.mark.parametrize("same_time", [1, 3, 199])
def test_logs_are_read_in_pages_keyed_on_their_time_each_once(same_time):
    """Ties straddle page boundaries; every record is read, once (200 records stamped in one
    microsecond, which no writer produces, would fall back to unreliable offsets)."""
    logs = [log(i // same_time, f"line {i}", written=i // same_time) for i in range(650)]
    server = LogServer(logs)
    read = asyncio.run(read_logs_since(server, uuid.UUID(RUN_ID), None))
    assert sorted(r["id"] for r in read) == sorted(r["id"] for r in logs)
    since = ec.from_micros(ec.micros(logs[400]["timestamp"]))
    later = asyncio.run(read_logs_since(server, uuid.UUID(RUN_ID), since))
    expected = {r["id"] for r in logs if ec.micros(r["timestamp"]) >= ec.micros(logs[400]["timestamp"])}
    assert {r["id"] for r in later} == expected
