"""Where a job's budget comes from: the body's own `budget`, or its owner's default budget
(dspy_service/budget_defaults.py) when the body has no `budget` key at all.

The default applies whole (a body's budget, even `null` or `{}`, replaces it, limit by
limit nothing is merged), when the job or schedule is created; a schedule keeps it for its
runs, and a PATCH that gives `budget` makes the schedule's own. The job's spec records the
source (`budget_source`: "job" | "user_default"), which its budget details show.

How it fails: a default too small for this job fails the same submit-time checks as a
body's budget (api/preflight.py `check_budget`): JobError (400) naming the limit and saying
it is the owner's default. Prefect's errors reading the default propagate.
"""

from __future__ import annotations

from typing import Any

from fastapi.concurrency import run_in_threadpool
from prefect.client.orchestration import PrefectClient

from api.preflight import check_budget
from dspy_service.budget import JOB, USER_DEFAULT
from dspy_service.budget_defaults import default_budget
from dspy_service.errors import JobError
from dspy_service.schemas import JobRequest, JobSpec


def own_budget_source(spec: JobSpec) -> str | None:
    """The source of a budget the body gave: "job", or None for no limit at all."""
    return JOB if spec.budget is not None and spec.budget.limits() else None


async def with_default_budget(client: PrefectClient, request: JobRequest, spec: JobSpec) -> JobSpec:
    """`spec` with its budget's source; the owner's default budget, checked, when the body
    names no `budget`."""
    if "budget" in request.model_fields_set:
        return spec.model_copy(update={"budget_source": own_budget_source(spec)})
    default = await default_budget(client, spec.username)
    if default is None:
        return spec
    spec = spec.model_copy(update={"budget": default, "budget_source": USER_DEFAULT})
    try:
        await run_in_threadpool(check_budget, spec, request.dataset)
    except JobError as exc:
        raise JobError(
            f"the default budget of {spec.username} (PUT /users/me/budget) does not fit this job: {exc.message}; "
            "give the job its own `budget` or change the default",
            field=exc.field,
        ) from None
    return spec


def patched_budget_source(spec: JobSpec, stored_job: dict[str, Any], changes: dict[str, Any]) -> JobSpec:
    """A PATCHed schedule's budget source: the schedule's own once the PATCH gives
    `budget`, else what it was."""
    if "budget" in changes:
        return spec.model_copy(update={"budget_source": own_budget_source(spec)})
    stored = stored_job.get("budget_source")
    source = stored if stored in (JOB, USER_DEFAULT) else JOB
    return spec.model_copy(update={"budget_source": source if own_budget_source(spec) else None})
