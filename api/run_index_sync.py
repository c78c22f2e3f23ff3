"""Keeps the list index (api/run_index.py) loaded, current and checked, and answers
GET /jobs from it when it may (`ListIndex.runs`).

While pages are asked for (the last one within HOT_SECONDS), every ROUND_SHARE of max_age:
- load: the job deployments' runs, in id order, LOAD_PAGE at a time (at the first page,
  after a (re)connect of the read model's event subscription, when counts showed runs
  missing);
- refresh: one filter request re-reads the runs events named and the active runs (whose
  labels may change without an event) read more than that long ago;
- count: one count of the deployments' runs against the index's size; fewer means runs
  were deleted in Prefect: counts over chunks of the held ids, halved until small, then
  one read, find which, and they go.
A page asked for when the index is loaded but not current (no round lately, an event just
in) waits on one round trip: the due re-reads and, if the last count is too old, a count
beside them. Before the index is loaded, when that is not enough, or on any error, `runs`
returns None and the caller reads Prefect as before.

How it fails: a failed load, refresh or count is logged (once per outage) and tried
again next round; meanwhile pages read Prefect. Nothing here fails a request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Protocol

from prefect.client.schemas.filters import FlowRunFilter
from prefect.client.schemas.sorting import FlowRunSort

from api.prefect_reads import Run
from api.run_index import RunIndex
from api.run_pages import ids_filter, read_by_id

logger = logging.getLogger("dspy_service.api")

# Rounds run while a page was asked for within this: a dashboard polling every second or two
# gets pages from memory; a page asked for after a longer pause waits on one round trip
# instead of Prefect answering three requests a second for nobody.
HOT_SECONDS = 3.0
ROUND_SHARE = 0.5  # of max_age: a round's count is at most this old, plus its own time
LOAD_PAGE = 200
REFRESH_BATCH = 200  # most runs re-read in one request
COUNT_CHUNK = 1000  # held ids counted per request when looking for deleted runs
READ_BELOW = 50  # a chunk this small with runs missing is read to find which
TOO_MANY_RECHECK_SECONDS = 60.0


class IndexSource(Protocol):
    async def read_runs(
        self, run_filter: FlowRunFilter | None, sort: FlowRunSort, *, limit: int, offset: int = 0
    ) -> list[Run]: ...

    async def count_runs(self, run_filter: FlowRunFilter | None) -> int: ...


class ListIndex:
    def __init__(
        self,
        source: IndexSource,
        index: RunIndex,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.source = source
        self.index = index
        self._sleep = sleep
        # The index's clock: a load's start and the reads it compares it with are one time line.
        self._clock = index.clock
        self._refreshing = asyncio.Lock()
        self._asked_at: float | None = None
        self._too_many_at: float | None = None
        self._failing = False

    # -- serving ----------------------------------------------------------------------
    async def runs(self, owner_tag: str | None, state_types: Collection[str] | None) -> list[Run] | None:
        """The runs of that owner (None: everyone's) in those state types, newest first,
        from the index; None: read Prefect."""
        if not self.index.enabled:
            return None
        self._asked_at = self._clock()
        if not self.index.servable():
            if not (self.index.live and self.index.loaded):
                return None
            try:
                await self._catch_up()
            except Exception as exc:  # the caller reads Prefect, which reports its own errors
                logger.info("list index: catching up failed (%s: %s); reading Prefect", type(exc).__name__, exc)
                return None
            if not self.index.servable():
                return None
        return self.index.runs(owner_tag, state_types)

    async def _catch_up(self) -> None:
        """One round trip's worth of catching up for a page: the due runs' re-read and, when
        the last count is over max_age old (no page asked lately), a count beside it. Runs
        found gone are left to the next round: the page reads Prefect meanwhile."""
        if self.index.counted_within(self.index.max_age):
            await self.refresh(self.index.max_age)
        else:
            await asyncio.gather(self.refresh(self.index.max_age), self.verify(find_gone=False))

    def hot(self) -> bool:
        return self._asked_at is not None and self._clock() - self._asked_at <= HOT_SECONDS

    # -- keeping it current -----------------------------------------------------------
    async def refresh(self, older_than: float) -> int:
        """Re-read the runs due (one request, at most REFRESH_BATCH); how many were asked."""
        async with self._refreshing:
            asked = self.index.due(older_than, limit=REFRESH_BATCH)
            if not asked.marks:
                return 0
            self.index.refreshed(asked, await read_by_id(self.source, asked.marks))
            return len(asked.marks)

    async def load(self) -> bool:
        """Read every job run into the index; False when there are too many or a reconnect
        came in between."""
        generation, started = self.index.generation, self._clock()
        if await self.source.count_runs(None) > self.index.max_runs:
            self._too_many(started)
            return False
        runs: dict[str, Run] = {}
        offset = 0
        while True:
            # By id: a total order, so no run sharing a start time with another is skipped
            # or read twice across pages (the index orders them itself).
            page = await self.source.read_runs(None, FlowRunSort.ID_DESC, limit=LOAD_PAGE, offset=offset)
            runs.update((str(run["id"]), run) for run in page)
            offset += len(page)
            if len(page) < LOAD_PAGE:
                break
        if not self.index.loaded_all(runs.values(), started, generation):
            if self.index.too_many:
                self._too_many(started)
            return False
        logger.info("list index: %d job runs held", len(runs))
        return True

    def _too_many(self, now: float) -> None:
        if self._too_many_at is None:
            logger.warning(
                "list index: more than %d job runs stored; GET /jobs pages read Prefect "
                "(DSPY_SERVICE_LIST_INDEX_MAX_RUNS)", self.index.max_runs,
            )
        self.index.mark_too_many()
        self._too_many_at = now

    async def verify(self, find_gone: bool = True) -> str | None:
        """Count the deployments' runs against the index; find and drop deleted ones."""
        check = self.index.count_check()
        if check is None:
            return None
        outcome = self.index.counted(check, await self.source.count_runs(None))
        if outcome == "gone" and find_gone:
            await self.drop_gone(self.index.held_ids())
        return outcome

    async def drop_gone(self, held: Sequence[str]) -> None:
        """Find which of `held` Prefect no longer has, by counts over chunks, and drop them."""
        for start in range(0, len(held), COUNT_CHUNK):
            await self._narrow(held[start : start + COUNT_CHUNK])

    async def _narrow(self, ids: Sequence[str]) -> None:
        if len(ids) <= READ_BELOW:
            found = await read_by_id(self.source, ids)
            for run_id in ids:
                if run_id not in found:
                    self.index.remove(run_id)
            return
        if await self.source.count_runs(ids_filter(ids)) == len(ids):
            return
        middle = len(ids) // 2
        await self._narrow(ids[:middle])
        await self._narrow(ids[middle:])

    async def tick(self) -> None:
        """One round: load if needed, refresh the due runs, count."""
        if not self.index.live:
            return
        if self.index.too_many:
            if self._too_many_at is not None and self._clock() - self._too_many_at < TOO_MANY_RECHECK_SECONDS:
                return
        if not self.index.loaded and not await self.load():
            return
        await self.refresh(self.index.max_age * ROUND_SHARE)
        await self.verify()

    async def run_forever(self) -> None:
        if not self.index.enabled:
            return
        while True:
            await self._sleep(self.index.max_age * ROUND_SHARE)
            if not self.hot():
                continue
            try:
                await self.tick()
                if self._failing:
                    logger.info("list index: Prefect answers again")
                self._failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Prefect unreachable: pages read it (and fail) meanwhile
                if not self._failing:
                    logger.warning("list index: round failed (%s: %s); pages read Prefect", type(exc).__name__, exc)
                self._failing = True
