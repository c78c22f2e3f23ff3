"""The list index (issue #16): every job run of the job deployments, held by the API
process so that a GET /jobs page is cut from memory instead of Prefect's filter and count
(which cost 20-80 ms on SQLite and 50-250 ms on PostgreSQL with 10,000 runs stored).
Pure bookkeeping, no I/O: api/run_index_sync.py loads it, refreshes it and checks it.

A page is served from here only while all of these hold (`servable`), else the caller reads
Prefect as before; each is what bounds one kind of change to max_age (1 s):

- the read model's event subscription is up and did not reconnect since the index was
  loaded (a reconnect empties it: events may have been missed);
- no flow-run event is waiting (`dirty`): a state change or a creation emits one, and the
  event's run is re-read before the next page is served from here;
- every run whose labels may still change without an event (`active`: Pending, Running,
  Cancelling, Paused, or in a terminal state for less than `settle` seconds, while its
  last label writes may still land) was read at most max_age ago: the engine writes
  progress, metrics and a scheduled run's owner tag with a PATCH that emits no event;
- the last conclusive count of the deployments' runs (`verified`) started at most max_age
  ago and matched: a delete made in Prefect emits no event, so a count below the index's
  size means runs are gone (the sync finds which); a count above it several times over
  means the index missed runs (it is reloaded).

Runs in a terminal state older than `settle` are never re-read: none of our processes
writes to them then, and a retry is a state change (an event); a label or tag PATCH made
by hand on one shows in lists at its next event. Ownership is a tag
filter over the runs' own tags, exactly as Prefect's filter applies it (api/ownership.py
decides the owner). Memory: at most `max_runs` runs (the API's JSON, as Prefect sent
them; ~11 KB each in bench/read_model.py); with more job runs the index is not loaded
(`too_many`) and pages read Prefect.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from api.prefect_reads import Run
from dspy_service.contract import TERMINAL_STATE_TYPES

# Events that change nothing a page shows (the engine's liveness beat).
IGNORED_EVENTS = frozenset({"prefect.flow-run.heartbeat"})
# Counts above the index's size in a row before it is reloaded (one is a creation in flight).
GROWN_ROUNDS_BEFORE_RELOAD = 3
# Runs whose labels nothing writes until their next state change.
QUIET_STATES = frozenset({"SCHEDULED"})
# Runs waiting on a re-read past which the index reloads instead (a load reads 200 per request too).
DIRTY_BEFORE_RELOAD = 1000


class Indexed:
    """One held run and what pages select and order it by."""

    __slots__ = ("run", "read_at", "newest_first", "tags", "state_type", "settles_at")

    def __init__(self, run: Run, read_at: float) -> None:
        self.newest_first: tuple[int, float, str] = (0, 0.0, "")
        self.update(run, read_at)

    def update(self, run: Run, read_at: float) -> None:
        self.run = run
        self.read_at = read_at  # when the read that produced `run` started (monotonic)
        start = run.get("expected_start_time")
        # Newest expected start first, runs without one last; ties by id, so every replica
        # cuts the same pages.
        self.newest_first = (1 if start else 0, _timestamp(start) if start else 0.0, str(run["id"]))
        self.tags = frozenset(run.get("tags") or ())
        self.state_type: str | None = run.get("state_type")
        # Wall time after which nothing writes it (a terminal run without a state's time: at once).
        self.settles_at: float | None = None
        if self.state_type in TERMINAL_STATE_TYPES:
            stamp = (run.get("state") or {}).get("timestamp")
            self.settles_at = _timestamp(stamp) if stamp else 0.0


def _timestamp(value: str) -> float:
    return dt.datetime.fromisoformat(value).timestamp()


@dataclass(frozen=True)
class Asked:
    """Run ids a refresh re-reads, with the event mark each had when asked."""

    marks: Mapping[str, int]
    generation: int
    started: float


@dataclass(frozen=True)
class CountCheck:
    """Taken before a count of the deployments' runs: what the index held then."""

    size: int
    membership: int  # bumped whenever a run joins or leaves the index
    generation: int
    started: float


class RunIndex:
    def __init__(
        self,
        max_runs: int,
        max_age: float,
        settle: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_runs = max_runs
        self.max_age = max_age
        self.settle = settle
        self.clock = clock
        self.wall_clock = wall_clock
        self.live = False
        self.loaded = False
        self.too_many = False
        self._entries: dict[str, Indexed] = {}
        self._dirty: dict[str, int] = {}
        self._seq = 0
        self._generation = 0
        self._membership = 0
        self._verified_at: float | None = None
        self._grown_rounds = 0
        self._ordered: list[Indexed] | None = None
        # Pages' candidate lists per (owner, state types) until any held run changes: a
        # dashboard's repeated page costs no filtering of every held run.
        self._selections: dict[tuple[str | None, tuple[str, ...] | None], list[Run]] = {}
        self._active_ids: set[str] = set()  # runs that may be active (pruned as they settle)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.max_runs > 0

    @property
    def generation(self) -> int:
        return self._generation

    # -- the subscription -------------------------------------------------------------
    def connected(self) -> None:
        self._reset()
        self.live = True

    def disconnected(self) -> None:
        self._reset()
        self.live = False

    def _reset(self) -> None:
        """Forget everything: the next load reads it all again."""
        self._generation += 1
        self._entries.clear()
        self._dirty.clear()
        self._active_ids.clear()
        self._ordered = None
        self._selections.clear()
        self._verified_at = None
        self._grown_rounds = 0
        self.loaded = False
        self.too_many = False

    def on_event(self, run_id: str, event_name: str) -> None:
        """A flow-run event named `run_id`: re-read that run before serving a page."""
        if not self.live or event_name in IGNORED_EVENTS:
            return
        self._seq += 1
        self._dirty[run_id] = self._seq
        if len(self._dirty) > DIRTY_BEFORE_RELOAD:
            self._reset_for_reload()  # long unread: reading it all again is cheaper

    # -- loading ----------------------------------------------------------------------
    def loaded_all(self, runs: Iterable[Run], started: float, generation: int) -> bool:
        """The whole set of runs as read from `started` on; False when a reconnect came
        in between (the read is dropped) or there are more than max_runs."""
        if generation != self._generation or not self.live:
            return False
        runs = list(runs)
        if len(runs) > self.max_runs:
            self.too_many = True
            return False
        for run in runs:
            self._put(run, started)
        self.loaded = True
        self.too_many = False
        return True

    def mark_too_many(self) -> None:
        self.too_many = True

    def _put(self, run: Run, read_at: float) -> None:
        run_id = str(run["id"])
        old = self._entries.get(run_id)
        if old is not None and old.read_at > read_at:
            return  # a newer read is already held
        self._selections.clear()
        if old is None:
            self._membership += 1
            entry = self._entries[run_id] = Indexed(run, read_at)
            self._ordered = None
        else:
            order = old.newest_first
            old.update(run, read_at)  # in place: the order held stays valid unless its key moved
            entry = old
            if entry.newest_first != order:
                self._ordered = None
        if self._active(entry, self.wall_clock()):
            self._active_ids.add(run_id)
        else:
            self._active_ids.discard(run_id)

    def remove(self, run_id: str) -> None:
        """The run is gone (deleted here or found gone)."""
        if self._entries.pop(run_id, None) is not None:
            self._membership += 1
            self._ordered = None
            self._selections.clear()
        self._dirty.pop(run_id, None)
        self._active_ids.discard(run_id)

    def forget(self, run_id: str) -> None:
        """This process changed or created the run: re-read it before the next page."""
        self._seq += 1
        self._dirty[run_id] = self._seq

    # -- refreshing -------------------------------------------------------------------
    def _active(self, entry: Indexed, wall_now: float) -> bool:
        if entry.settles_at is not None:
            return wall_now - entry.settles_at < self.settle
        return entry.state_type not in QUIET_STATES

    def _active_entries(self) -> list[tuple[str, Indexed]]:
        """The held runs that may still change without an event; settled ones leave the set."""
        wall_now = self.wall_clock()
        active = []
        for run_id in list(self._active_ids):
            entry = self._entries[run_id]
            if self._active(entry, wall_now):
                active.append((run_id, entry))
            else:
                self._active_ids.discard(run_id)
        return active

    def due(self, older_than: float, limit: int) -> Asked:
        """At most `limit` runs to re-read: the dirty ones (oldest event first), then the
        active ones read more than `older_than` seconds ago."""
        now = self.clock()
        marks = dict(list(self._dirty.items())[:limit])
        for run_id, entry in self._active_entries():
            if len(marks) >= limit:
                break
            if run_id not in marks and now - entry.read_at > older_than:
                marks[run_id] = 0
        return Asked(marks, self._generation, now)

    def refreshed(self, asked: Asked, found: Mapping[str, Run]) -> None:
        """The answer to re-reading `asked`: runs found are held as read, the others are not
        job runs (any more): they go."""
        if asked.generation != self._generation:
            return
        for run_id, mark in asked.marks.items():
            run = found.get(run_id)
            if run is None:
                self.remove(run_id)
            else:
                self._put(run, asked.started)
            if self._dirty.get(run_id) == mark:
                del self._dirty[run_id]  # an event after the read started keeps it dirty

    # -- counting ---------------------------------------------------------------------
    def count_check(self) -> CountCheck | None:
        """Before counting the deployments' runs; None while a new run is not held yet (a
        count then cannot tell a delete)."""
        if not self.loaded or any(run_id not in self._entries for run_id in self._dirty):
            return None
        return CountCheck(len(self._entries), self._membership, self._generation, self.clock())

    def counted(self, check: CountCheck, count: int) -> str:
        """Prefect's count for `check`: "ok" (verified), "gone" (runs were deleted: find
        them), "grown" (runs not held yet, maybe in flight), "reload", or "stale" (the index
        changed meanwhile: ask again)."""
        if check.generation != self._generation or check.membership != self._membership:
            return "stale"
        if count < check.size:
            return "gone"
        if count > check.size:
            self._grown_rounds += 1
            if self._grown_rounds >= GROWN_ROUNDS_BEFORE_RELOAD:
                self._reset_for_reload()
                return "reload"
            return "grown"
        self._grown_rounds = 0
        self._verified_at = max(self._verified_at or check.started, check.started)
        return "ok"

    def _reset_for_reload(self) -> None:
        live = self.live
        self._reset()
        self.live = live

    def held_ids(self) -> list[str]:
        return list(self._entries)

    # -- serving ----------------------------------------------------------------------
    def servable(self) -> bool:
        """Whether a page cut from here now is as current as the 1 s rule asks."""
        if not (self.enabled and self.live and self.loaded) or self._dirty or not self.counted_within(self.max_age):
            return False
        now = self.clock()
        return not any(now - entry.read_at > self.max_age for _, entry in self._active_entries())

    def counted_within(self, seconds: float) -> bool:
        """The last conclusive count matched and started at most `seconds` ago."""
        return self._verified_at is not None and self.clock() - self._verified_at <= seconds

    def runs(self, owner_tag: str | None, state_types: Collection[str] | None) -> list[Run]:
        """The held runs with that owner's tag (None: everyone's) in those state types
        (None: all), newest expected start first (runs without one last). The list is
        shared with later calls until a held run changes: read it, do not modify it."""
        key = (owner_tag, tuple(sorted(state_types)) if state_types is not None else None)
        if (selected := self._selections.get(key)) is not None:
            return selected
        if self._ordered is None:
            self._ordered = sorted(self._entries.values(), key=lambda e: e.newest_first, reverse=True)
        selected = self._selections[key] = [
            e.run for e in self._ordered
            if (owner_tag is None or owner_tag in e.tags) and (state_types is None or e.state_type in state_types)
        ]
        return selected
