"""The order of a job's event stream, and the cursor (`id:` / `Last-Event-ID`) naming a
place in it (pure: no I/O, no clock).

The stream is a pure function of what Prefect holds, so every API replica, before or
after a restart, sends the same events in the same order, and a cursor from one resumes
on another. Its items:

- each state of the flow run's state history (`status` events), at the state's
  `timestamp`; Prefect's server stamps flow-run states itself (a client proposes a state
  without a time), so states and logs share one clock. A Running state is `validating`:
  the job is `running` from its compile task on (api/status.py), a `status` event at the
  compile task run's `created`, the server's time of its row;
- each log of the run (`progress` events: the progress logger's records; `log` events:
  the rest), at the log's `created`, the server's time of receipt. Not its `timestamp`:
  that is the writer's clock, and a batch of logs (the engine ships every ~2 s, the
  worker its own) reaches Prefect after records other writers stamped later;
- when the run is in a terminal state, the final event (`result` / `error`), at that
  state's time + FINAL_GRACE_SECONDS: the lines the engine and the worker flush at exit
  reach Prefect shortly after the run ended and still come before it. Logs received
  later than that are not part of the stream (they are in GET /jobs/{id}/logs).

Items are ordered by `Position` (time in µs, rank: state < log < final, then for logs the
writer's timestamp, which keeps a batch's lines in the order they were written, then the
Prefect id), a total order. A cursor is the position of the last item a client got; it
resumes with every item after it. A reader may send an item only once no earlier item can
still appear: Prefect stamps a row before its transaction commits, so a row stamped t is
visible by t + SETTLE_SECONDS (`due`: items before `cutoff = now - SETTLE_SECONDS`).
Clocks of the API and Prefect hosts are assumed NTP-close; skew eats into the settle.

Reads of logs are bounded: a poll reads logs whose `timestamp` is at most
LOG_LOOKBACK_SECONDS before the point the reader has passed. A log whose receipt lagged
its own timestamp by more than that (a writer that could not reach Prefect for minutes)
could be missed by such a read, so it is left out of the stream for every reader alike
(`shipped_late`): resuming stays exact.

How it fails: `decode_cursor` raises CursorError for anything that is not a cursor this
module wrote (the route answers 400 naming Last-Event-ID); items of malformed Prefect
rows raise KeyError/ValueError (Prefect's own schema guarantees the fields).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from prefect.client.schemas.objects import StateType

from api.status import JobStatus, job_message, job_status
from api.views import contract_timestamp, log_entry
from dspy_service import contract

SETTLE_SECONDS = 1.5
FINAL_GRACE_SECONDS = 2.0
LOG_LOOKBACK_SECONDS = 120.0

RANK_STATE, RANK_LOG, RANK_FINAL = 0, 1, 2
CURSOR_VERSION = "1"
_CURSOR = re.compile(r"^1\.(\d{1,19})\.([0-2])\.(\d{1,19})\.([0-9a-f]{32})$")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


class CursorError(ValueError):
    """A Last-Event-ID that is not a cursor of this stream."""


@dataclass(frozen=True, order=True)
class Position:
    """Where an item sits in the stream; also what a cursor encodes."""

    time_us: int
    rank: int
    sub_us: int = 0  # logs: the writer's timestamp
    id: str = "0" * 32  # the Prefect row's id, 32 hex digits


START = Position(0, RANK_STATE)  # before every item


def encode_cursor(position: Position) -> str:
    return f"{CURSOR_VERSION}.{position.time_us}.{position.rank}.{position.sub_us}.{position.id}"


def decode_cursor(text: str | None) -> Position:
    """The position a Last-Event-ID names; START for none (or an empty one)."""
    if text is None or not text.strip():
        return START
    match = _CURSOR.match(text.strip())
    if match is None:
        raise CursorError("Last-Event-ID is not an event id of this stream (send the `id` of the last event you got)")
    time_us, rank, sub_us, hex_id = match.groups()
    return Position(int(time_us), int(rank), int(sub_us), hex_id)


def micros(timestamp: str) -> int:
    """Microseconds since the epoch of a Prefect JSON timestamp (`...Z` or `+00:00`)."""
    moment = dt.datetime.fromisoformat(timestamp)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return (moment - _EPOCH) // _MICROSECOND


def from_micros(time_us: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=time_us)


@dataclass(frozen=True)
class Item:
    """One event of the resumable sequence; `data` is None for the final event, whose
    summary the stream reads when it sends it."""

    position: Position
    type: str  # status | progress | log | final
    data: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def id(self) -> str:
        return encode_cursor(self.position)


def status_data(state: Mapping[str, Any], compile_us: int | None = None) -> dict[str, Any]:
    """A `status` event: one state of the run's history in the contract's terms. Prefect's
    Running is `validating` unless the compile task (at `compile_us`) started before it."""
    state_type = _state_type(state)
    compile_started = compile_us is not None and compile_us <= micros(state["timestamp"])
    status = job_status(state_type, compile_started=compile_started)
    ended = status in (JobStatus.failed, JobStatus.cancelled)
    return {
        "status": status.value,
        "prefect_state": state.get("name"),
        "timestamp": contract_timestamp(state.get("timestamp")),
        "message": job_message(state_type, state.get("message")) if ended else None,
    }


def _state_type(state: Mapping[str, Any]) -> StateType:
    return StateType(state["type"])


def state_item(state: Mapping[str, Any], compile_us: int | None = None) -> Item:
    position = Position(micros(state["timestamp"]), RANK_STATE, 0, UUID(state["id"]).hex)
    return Item(position, "status", status_data(state, compile_us))


def compile_item(task_run: Mapping[str, Any]) -> Item:
    """validating -> running: the `status` event of the compile task run's creation."""
    position = Position(micros(task_run["created"]), RANK_STATE, 0, UUID(task_run["id"]).hex)
    data = {
        "status": JobStatus.running.value,
        "prefect_state": "Running",
        "timestamp": contract_timestamp(task_run["created"]),
        "message": None,
    }
    return Item(position, "status", data)


def log_item(log: Mapping[str, Any]) -> Item:
    """A `progress` event for a record of the progress logger, else a `log` event (the
    entries of GET /jobs/{id}/logs, as `views.split_logs` splits them)."""
    position = Position(micros(log["created"]), RANK_LOG, micros(log["timestamp"]), UUID(log["id"]).hex)
    event = contract.decode_progress(log["name"], log["message"])
    if event is not None:
        return Item(position, "progress", event)
    return Item(position, "log", log_entry(log))


def shipped_late(log: Mapping[str, Any]) -> bool:
    """Received more than LOG_LOOKBACK_SECONDS after it was written: not streamed."""
    return micros(log["created"]) - micros(log["timestamp"]) > LOG_LOOKBACK_SECONDS * 1_000_000


def final_item(state: Mapping[str, Any]) -> Item | None:
    """The final event's place, when `state` (the run's current one) ends the run."""
    if state.get("type") not in contract.TERMINAL_STATE_TYPES:
        return None
    time_us = micros(state["timestamp"]) + int(FINAL_GRACE_SECONDS * 1_000_000)
    return Item(Position(time_us, RANK_FINAL, 0, UUID(state["id"]).hex), "final")


def final_event_type(status: JobStatus) -> str:
    """`result` for a job that succeeded, `error` for one that failed or was cancelled
    (also a COMPLETED run whose result the API refused: the gateway's outcome says failed)."""
    return "result" if status is JobStatus.success else "error"


def cutoff_us(now: dt.datetime) -> int:
    """Items before this time are settled: none earlier can still appear."""
    return (now - _EPOCH) // _MICROSECOND - int(SETTLE_SECONDS * 1_000_000)


def due(items: Iterable[Item], after: Position, cutoff: int) -> list[Item]:
    """The items to send now, in stream order: after the cursor, settled (before `cutoff`),
    none after the final event. The final event itself is due again when the cursor names
    it, or a place after it (a client that resumes after the end gets it once more, and
    only it)."""
    ordered = sorted(items, key=lambda item: item.position)
    final = next((item for item in ordered if item.type == "final"), None)
    if final is not None and final.position <= after:
        return [final] if final.position.time_us < cutoff else []
    sent = []
    for item in ordered:
        if item.position.time_us >= cutoff:
            break
        if item.position > after:
            sent.append(item)
        if item is final:
            break
    return sent
