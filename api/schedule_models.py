"""Recurring optimizations: the wire models of /schedules and the Prefect names they use.

A schedule IS a Prefect deployment schedule on the optimization deployment (no table of
our own): its cadence is the Prefect schedule, its job payload the schedule's flow-run
parameters (`job`, `dataset_ref` for inline rows stored once, `schedule_id`, and
`register_as` when its promoted runs are registered), its name the schedule's slug. Its
champion pointer is a Prefect Variable, and a global concurrency limit serializes the
champion gates of its runs; their names are in dspy_service/contract.py.

Bad input fails as pydantic validation errors (422) naming the field, using Prefect's own
cron and timezone checks; a cadence change a schedule made elsewhere cannot take raises
JobError (400).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from dspy_service.errors import JobError
from dspy_service.schedule_registration import RegisterAs
from dspy_service.schemas import JobRequest

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


def _prefect_checked(build: Any) -> Any:
    """Run Prefect's own validation; its message becomes ours (one error, our field)."""
    try:
        return build()
    except ValidationError as exc:
        raise ValueError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None


MAX_INTERVAL_SECONDS = 366 * 24 * 3600


class Cadence(BaseModel):
    """When a schedule runs: a cron expression or a fixed interval, in a timezone."""

    model_config = ConfigDict(extra="ignore")
    # POST needs a cadence; PATCH may leave it as it is.
    cadence_required: ClassVar[bool] = False

    cron: str | None = Field(default=None, min_length=1, description="e.g. '0 3 * * *' (03:00 every day)")
    # At most a year: Prefect's scheduler adds the interval to datetimes, which overflow
    # past about 10**13 s; anything rarer is a cron.
    interval_seconds: float | None = Field(
        default=None, ge=1, le=MAX_INTERVAL_SECONDS, allow_inf_nan=False, validate_default=True,
        description="Run every N seconds (1 s to 366 days).",
    )
    timezone: str | None = Field(default=None, description="IANA name, e.g. Europe/Berlin. Default UTC.")

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        return None if value is None else _prefect_checked(lambda: CronSchedule(cron=value.strip()).cron)

    @field_validator("interval_seconds")
    @classmethod
    def _one_cadence(cls, value: float | None, info: ValidationInfo) -> float | None:
        if "cron" not in info.data:
            return value  # the cron itself was invalid; that error says why
        cron = info.data["cron"]
        if cron is not None and value is not None:
            raise ValueError("give either `cron` or `interval_seconds`, not both")
        if cls.cadence_required and cron is None and value is None:
            raise ValueError("give `interval_seconds` or `cron` (e.g. '0 3 * * *')")
        return value

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _prefect_checked(lambda: CronSchedule(cron="0 0 * * *", timezone=value).timezone)

    def prefect_schedule(self, timezone: str | None = None) -> CronSchedule | IntervalSchedule:
        tz = self.timezone or timezone or "UTC"
        if self.cron is not None:
            return CronSchedule(cron=self.cron, timezone=tz)
        if self.interval_seconds is None:
            raise ValueError("no cadence given")
        return IntervalSchedule(interval=dt.timedelta(seconds=self.interval_seconds), timezone=tz)


class ScheduleRequest(JobRequest, Cadence):
    """POST /schedules: a POST /run body plus its cadence, an optional name and `active`."""

    cadence_required: ClassVar[bool] = True

    name: str | None = Field(
        default=None, min_length=1, max_length=100, pattern=NAME_PATTERN,
        description="Unique among schedules; shown in the Prefect UI (the schedule's slug).",
    )
    active: bool = True
    register_as: RegisterAs | None = Field(
        default=None,
        description="Register each promoted run as the next version of this program of the owner, "
        "and move this alias to it (dspy_service/schedule_registration.py).",
    )


class SchedulePatch(Cadence):
    """PATCH /schedules/{id}: any of active, name, the cadence, and job fields (as in
    POST /run; given fields replace the stored ones, the merged job is validated again)."""

    model_config = ConfigDict(extra="allow")

    name: str | None = Field(default=None, min_length=1, max_length=100, pattern=NAME_PATTERN)
    active: bool | None = None
    register_as: RegisterAs | None = Field(default=None, description="null stops registering; absent keeps it.")

    @property
    def changes_register_as(self) -> bool:
        return "register_as" in self.model_fields_set

    @property
    def changes_cadence(self) -> bool:
        return self.cron is not None or self.interval_seconds is not None or self.timezone is not None

    def job_fields(self) -> dict[str, Any]:
        """The job payload fields given (by their wire names); unknown keys are ignored."""
        return {key: value for key, value in (self.model_extra or {}).items() if key in job_wire_fields()}


def job_wire_fields() -> set[str]:
    names = set()
    for name, field in JobRequest.model_fields.items():
        names.add(field.alias or name)
    return names


def merge_job(stored_job: dict[str, Any], stored_ref: dict[str, Any] | None, changes: dict[str, Any]) -> tuple[
    dict[str, Any], bool
]:
    """The job payload after a PATCH, and whether the stored inline rows still apply.

    Rows are replaced by a new `dataset` or dropped for a `dataset_source` (and vice versa);
    the caller loads the stored rows again when they still apply, to validate the merge."""
    merged = {**stored_job, **{k: v for k, v in changes.items() if k != "dataset"}}
    if changes.get("dataset") is not None:
        merged["dataset"] = changes["dataset"]
        if "dataset_source" not in changes:
            merged["dataset_source"] = None
        return merged, False
    if merged.get("dataset_source"):
        return merged, False
    return merged, stored_ref is not None


def patched_cadence(current: Any, patch: SchedulePatch) -> CronSchedule | IntervalSchedule | None:
    """The Prefect schedule after a PATCH (None: unchanged). A new timezone alone keeps
    the cron or interval; a new cron or interval keeps the timezone unless one is given."""
    timezone = getattr(current, "timezone", None)
    if patch.cron is not None or patch.interval_seconds is not None:
        return patch.prefect_schedule(timezone=timezone)
    if patch.timezone is None:
        return None
    if isinstance(current, CronSchedule):
        return CronSchedule(cron=current.cron, timezone=patch.timezone, day_or=current.day_or)
    if isinstance(current, IntervalSchedule):
        return IntervalSchedule(interval=current.interval, timezone=patch.timezone)
    raise JobError(
        "this schedule's cadence is not cron or interval; give `cron` or `interval_seconds` with the timezone"
    )
