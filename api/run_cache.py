"""The API process's read model of job flow runs (issue #16): the runs GET /jobs/{id} and
/jobs/{id}/summary show, as the Prefect API's JSON (`Run`), kept current by Prefect's
event stream (api/run_events.py feeds it). Pure bookkeeping, no I/O.

The rule it keeps: a run is served from here only while the event subscription is up and
only if it was read from Prefect at most `max_age` seconds ago (read_model_max_age_seconds,
at most 1 s). Everything else reads Prefect (one round trip) and may be stored. So what a
GET shows is never older than `max_age`, whatever the events do:

- a state change (a cancel in the Prefect UI, another replica's cancel, the worker's
  states) emits a `prefect.flow-run.*` event: the entry is dropped when it arrives, so the
  change shows as fast as Prefect sends it;
- a delete, a label PATCH (progress, metrics, usage, the termination reason) or a tag
  PATCH (the owner's tag of a scheduled run) emit no event: the reconcile re-reads the
  entries served lately every max_age / 3 and drops the ones Prefect no longer has; an
  entry it does not reach in time ages out and is read through;
- a read that overlaps an event for its run (it may have read the state before the
  change), or a subscription that drops or reconnects while it is in flight, is not
  stored (`token`);
- while the subscription is down, nothing is served and nothing is stored: every GET
  reads Prefect as it did before there was a read model.

This replica's own writes (cancel, delete) drop their entry at once (`forget`).
Ownership is not decided here: the caller checks the run it gets, cached or read, by
the same code as ever (api/deps.py). Memory: at most `size` runs (LRU); size 0 is off.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from api.prefect_reads import Run

FLOW_RUN_RESOURCE = "prefect.flow-run."
# Entries served within this window are the ones the reconcile keeps fresh; the rest age
# out and read through when next asked for.
HOT_SECONDS = 30.0
# Most entries re-read per reconcile (one Prefect request: its page size).
RECONCILE_BATCH = 200
# How many runs' last-event marks are kept to tell a read that overlapped an event.
EVENT_MARKS = 10_000


@dataclass
class Entry:
    run: Run
    read_at: float  # when the read that produced `run` started (monotonic)
    served_at: float


@dataclass(frozen=True)
class Token:
    """Taken before a read of Prefect; `store` accepts the read only if no event for the
    run and no change of the subscription came in between."""

    generation: int
    seq: int
    started: float


def run_id_of_resource(resource_id: str) -> str | None:
    """`prefect.flow-run.<id>` -> `<id>`; None for any other resource."""
    if resource_id.startswith(FLOW_RUN_RESOURCE):
        return resource_id[len(FLOW_RUN_RESOURCE) :] or None
    return None


class RunCache:
    def __init__(self, size: int, max_age: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.max_age = max_age
        self.clock = clock
        self.live = False  # the event subscription is up
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._generation = 0
        self._seq = 0
        self._event_marks: OrderedDict[str, int] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.size > 0

    # -- the subscription ---------------------------------------------------------------
    def connected(self) -> None:
        """The subscription is (back) up: what was kept before may have missed events."""
        self._reset()
        self.live = True

    def disconnected(self) -> None:
        self._reset()
        self.live = False

    def _reset(self) -> None:
        self._generation += 1
        self._entries.clear()
        self._event_marks.clear()

    def on_event(self, resource_id: str) -> str | None:
        """A flow-run event arrived: its run's entry goes (the next GET reads it afresh).
        Returns the run id it named, if any."""
        run_id = run_id_of_resource(resource_id)
        if run_id is None:
            return None
        self._seq += 1
        self._event_marks[run_id] = self._seq
        self._event_marks.move_to_end(run_id)
        while len(self._event_marks) > EVENT_MARKS:
            self._event_marks.popitem(last=False)
        self._entries.pop(run_id, None)
        return run_id

    # -- reads ------------------------------------------------------------------------
    def fresh(self, run_id: str) -> Run | None:
        """The run, if it may be served without asking Prefect; None: read it."""
        entry = self._entries.get(run_id) if self.live else None
        now = self.clock()
        if entry is None or now - entry.read_at > self.max_age:
            self.misses += 1
            return None
        entry.served_at = now
        self._entries.move_to_end(run_id)
        self.hits += 1
        return entry.run

    def token(self) -> Token:
        return Token(self._generation, self._seq, self.clock())

    def unchanged_since(self, token: Token) -> bool:
        """Nothing that could change any run's view came in since `token` (no event, no
        write of this replica, no reconnect), the subscription is up and the read it marks
        started at most max_age ago: what a list page read then shows is still current."""
        return (
            self.enabled
            and self.live
            and token.generation == self._generation
            and token.seq == self._seq
            and self.clock() - token.started <= self.max_age
        )

    def store(self, run_id: str, run: Run, token: Token) -> bool:
        """Keep a run read from Prefect after `token` was taken; False when refused."""
        if not self.enabled or not self.live or token.generation != self._generation:
            return False
        if self._event_marks.get(run_id, 0) > token.seq:
            return False  # an event for it arrived during the read: the read may predate it
        old = self._entries.get(run_id)
        if old is not None and old.read_at > token.started:
            return False  # a newer read is already kept
        served = old.served_at if old is not None else token.started
        self._entries[run_id] = Entry(run, token.started, served)
        self._entries.move_to_end(run_id)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return True

    def forget(self, run_id: str) -> None:
        """This replica changed the run: the next read asks Prefect."""
        self._entries.pop(run_id, None)
        self._seq += 1
        self._event_marks[run_id] = self._seq

    # -- the reconcile ----------------------------------------------------------------
    def due_for_reconcile(self) -> list[str]:
        """The entries served within HOT_SECONDS whose read is older than max_age / 3, most
        recently served first, at most RECONCILE_BATCH; entries served longer ago go."""
        now = self.clock()
        cold = [k for k, e in self._entries.items() if now - e.served_at > HOT_SECONDS]
        for run_id in cold:
            del self._entries[run_id]
        due = [(e.served_at, k) for k, e in self._entries.items() if now - e.read_at > self.max_age / 3]
        due.sort(reverse=True)
        return [k for _, k in due[:RECONCILE_BATCH]]

    def reconciled(self, asked: Iterable[str], found: Mapping[str, Run], token: Token) -> None:
        """The answer to a re-read of `asked`: runs Prefect no longer has (deleted, or
        no longer a job) go; the others are stored as any read is."""
        for run_id in asked:
            run = found.get(run_id)
            if run is None:
                self._entries.pop(run_id, None)  # dropping is always safe
            else:
                self.store(run_id, run, token)
