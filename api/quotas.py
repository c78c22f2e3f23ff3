"""Per-user quotas (admins exempt): active jobs, schedules, and how often a schedule fires.

- Active jobs (pending + running, counted by the Prefect server by user tag and state):
  at `max_active_jobs_per_user` a new job is refused, 429 with `Retry-After`.
- Schedules (counted over the deployment's schedules by owner): at
  `max_schedules_per_user`, 429.
- A schedule's interval, or the smallest gap between its next cron fire times, below
  `min_schedule_interval_seconds`: 400 naming `interval_seconds` or `cron`.

The counts are read just before the create: two requests racing may both pass (each
replica counts what the server has), so a quota can be exceeded by the concurrent
requests of one user, never more.
"""

from __future__ import annotations

import datetime as dt
from itertools import pairwise

from fastapi import HTTPException
from prefect._vendor.croniter import croniter
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

from api.gateway import JobGateway
from api.identity import Caller
from dspy_service.contract import user_tag
from dspy_service.errors import JobError

RETRY_AFTER_SECONDS = 30
CRON_FIRES_CHECKED = 24
ACTIVE_STATES = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]


def too_many(detail: str) -> HTTPException:
    return HTTPException(status_code=429, detail=detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


async def check_active_jobs(gateway: JobGateway, caller: Caller, owner: str, adding: int = 1) -> None:
    """429 when `adding` more active jobs (a sweep's cells) would exceed the quota."""
    if caller.admin:
        return
    limit = gateway.settings.max_active_jobs_per_user
    run_filter = FlowRunFilter(
        tags=FlowRunFilterTags(all_=[user_tag(owner)]),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=ACTIVE_STATES)),
        # Runs a schedule created for later are not active yet.
        expected_start_time=FlowRunFilterExpectedStartTime(before_=dt.datetime.now(dt.UTC)),
    )
    active = await gateway.count_runs(run_filter)
    if active + adding > limit:
        have = f"you have {active} active jobs (pending or running)"
        if adding > 1:
            have = f"{adding} more jobs would be too many: {have}"
        raise too_many(
            f"{have}, the most allowed per user "
            f"(DSPY_SERVICE_MAX_ACTIVE_JOBS_PER_USER={limit}); wait for one to finish or cancel one"
        )


def check_schedule_count(caller: Caller, owned: int, limit: int) -> None:
    if not caller.admin and owned >= limit:
        raise too_many(
            f"you have {owned} schedules, the most allowed per user (DSPY_SERVICE_MAX_SCHEDULES_PER_USER={limit}); "
            "delete one first"
        )


def smallest_cron_gap(cron: str, timezone: str | None, day_or: bool = True) -> float:
    """Seconds between the closest two of a cron expression's next fire times."""
    start = dt.datetime.now(dt.UTC)
    if timezone:
        from zoneinfo import ZoneInfo

        start = start.astimezone(ZoneInfo(timezone))
    fires = croniter(cron, start, day_or=day_or)
    times = [fires.get_next(dt.datetime) for _ in range(CRON_FIRES_CHECKED)]
    return min((b - a).total_seconds() for a, b in pairwise(times))


def check_cadence(caller: Caller, cadence: CronSchedule | IntervalSchedule | None, minimum: float) -> None:
    """400 when a non-admin's schedule would fire more often than every `minimum` seconds."""
    if caller.admin or cadence is None:
        return
    if isinstance(cadence, IntervalSchedule) and cadence.interval.total_seconds() < minimum:
        raise JobError(
            f"interval_seconds must be at least {minimum:g} (DSPY_SERVICE_MIN_SCHEDULE_INTERVAL_SECONDS)",
            field="interval_seconds",
        )
    if isinstance(cadence, CronSchedule):
        gap = smallest_cron_gap(cadence.cron, cadence.timezone, cadence.day_or)
        if gap < minimum:
            raise JobError(
                f"cron {cadence.cron!r} fires {gap:g} s apart; schedules may fire at most every {minimum:g} s "
                "(DSPY_SERVICE_MIN_SCHEDULE_INTERVAL_SECONDS)",
                field="cron",
            )
