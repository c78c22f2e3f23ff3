"""A schedule's `register_as`: its promoted runs become versions of a registry program.

A schedule may say `register_as: {program, alias}` (`RegisterAs`, kept in the schedule's
Prefect parameters next to its job). When the champion gate (tasks/champion.py) promotes a
run of it, the run is registered as the next version of `program`, owned by the schedule's
owner, and `alias` moves to that version, under the champion lock the gate holds.

`register_promoted_run` is the TRUSTED side of that step, and the only code that writes
the registry for a schedule: the job-scoped Prefect proxy serves it to a sandboxed job
(deployments/runtime/prefect_proxy.py, `contract.CHAMPION_REGISTRATION_ROUTE`), an
unsandboxed engine calls it directly. The job names nothing but its own run: the program
name, alias and owner are read from the schedule on the Prefect server, the spec from the
run's own parameters (the job cannot change them), and the run must be a Running run of
that schedule and deployment, owned by the schedule's owner. What the job sends is its own
program (state, prompts, scores: what its result file will hold), filtered to the keys a
version document uses (`result_like`). Registering is idempotent per run: asked again
(a client retry), the version this run already got is returned and the alias set again.

How it fails: `RegistrationRefused(why)` when the run or schedule does not qualify or the
program cannot be documented (the gate then does not promote the run); `(None, why)` from
`register_promoted_run` when the schedule has no `register_as` (any more); Prefect's and the
store's errors (dspy_service/program_store.py) propagate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dspy_service.contract import PROGRAM_ALIAS_PATTERN, PROGRAM_NAME_PATTERN
from dspy_service.schemas import JobSpec

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

REGISTER_AS = "register_as"  # the key in a schedule's (and its runs') parameters
RUNNING = "RUNNING"


class RegisterAs(BaseModel):
    """Where a schedule's promoted runs are registered: a program of its owner, and the
    alias that follows the champion."""

    model_config = ConfigDict(extra="forbid")

    program: str = Field(
        pattern=PROGRAM_NAME_PATTERN,
        description="Program name (registry): 1-64 lowercase letters, digits, '-' and '_'.",
    )
    alias: str = Field(
        pattern=PROGRAM_ALIAS_PATTERN,
        description="Alias moved to each promoted run's version, e.g. 'production' (1-40 characters).",
    )


class RegistrationRefused(Exception):
    """The run cannot be registered; the message says why."""


def register_as_of(parameters: Any) -> RegisterAs | None:
    """The `register_as` of a schedule's (or run's) parameters; None when absent or invalid."""
    raw = parameters.get(REGISTER_AS) if isinstance(parameters, dict) else None
    try:
        return RegisterAs.model_validate(raw) if isinstance(raw, dict) else None
    except ValidationError:
        return None


# What a version document reads of a job's result (dspy_service/program_documents.py).
RESULT_KEYS = ("baseline_test_metric", "optimized_test_metric", "metric_improvement", "split_counts", "metric_name")
ARTIFACT_KEYS = ("program_state", "optimized_prompts", "metadata")
DETAIL_KEYS = ("dataset_rows", "dataset_sha256", "service_version")


def result_like(body: Any) -> dict[str, Any]:
    """The job's program as a result-shaped dict, with only what a version document uses
    (no pickle, nothing else the job may have added)."""
    if not isinstance(body, dict):
        raise RegistrationRefused("the program must be a JSON object")
    artifact = body.get("program_artifact") if isinstance(body.get("program_artifact"), dict) else {}
    details = body.get("details") if isinstance(body.get("details"), dict) else {}
    return {
        **{key: body.get(key) for key in RESULT_KEYS},
        "program_artifact": {key: artifact.get(key) for key in ARTIFACT_KEYS if key in artifact},
        "details": {key: details.get(key) for key in DETAIL_KEYS if key in details},
    }


def schedule_owner(parameters: Any) -> str | None:
    job = parameters.get("job") if isinstance(parameters, dict) else None
    owner = job.get("username") if isinstance(job, dict) else None
    return owner if isinstance(owner, str) and owner else None


def check_schedule_run(run: Any, schedule: Any) -> JobSpec:
    """The run's spec, if `run` (Prefect's JSON of a flow run) is a Running run of
    `schedule` (Prefect's JSON of a deployment schedule) owned by the schedule's owner."""
    if not isinstance(run, dict) or not isinstance(schedule, dict):
        raise RegistrationRefused("the run or its schedule no longer exists")
    parameters = run.get("parameters") if isinstance(run.get("parameters"), dict) else {}
    if str(parameters.get("schedule_id", "")).lower() != str(schedule.get("id", "")).lower():
        raise RegistrationRefused(f"the run is not a run of schedule {schedule.get('id')}")
    if not run.get("deployment_id") or str(run.get("deployment_id")) != str(schedule.get("deployment_id")):
        raise RegistrationRefused("the run is not a run of the schedule's deployment")
    state = run.get("state") if isinstance(run.get("state"), dict) else {}
    if state.get("type") != RUNNING:
        raise RegistrationRefused(f"the run is {state.get('name')}, not Running")
    try:
        spec = JobSpec.model_validate(parameters.get("job"))
    except ValidationError:
        raise RegistrationRefused("the run has no valid job payload") from None
    owner = schedule_owner(schedule.get("parameters"))
    if owner is None or spec.username != owner:
        raise RegistrationRefused("the run's owner is not the schedule's owner")
    return spec


async def read_json(client: PrefectClient, path: str, **path_params: Any) -> Any:
    """Prefect's raw JSON (None: 404); raw, because parsing a flow run into Prefect's
    model would import the serializer its state names."""
    import httpx

    try:
        response = await client.request("GET", path, path_params=path_params)  # type: ignore[arg-type]
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 404:
            return None
        raise
    return response.json()


async def read_schedule_of(client: PrefectClient, run: dict[str, Any]) -> dict[str, Any] | None:
    """The deployment schedule the run's `schedule_id` names, as Prefect's JSON."""
    parameters = run.get("parameters") if isinstance(run.get("parameters"), dict) else {}
    schedule_id, deployment_id = parameters.get("schedule_id"), run.get("deployment_id")
    if not schedule_id or not deployment_id:
        return None
    schedules = await read_json(client, "/deployments/{id}/schedules", id=str(deployment_id)) or []
    return next((s for s in schedules if str(s.get("id")).lower() == str(schedule_id).lower()), None)


async def register_promoted_run(
    client: PrefectClient, run_id: str, program: Any
) -> tuple[dict[str, Any] | None, str]:
    """Register the promoted run `run_id` as its schedule says: ({program, version,
    alias}, what was done), or (None, why not) when the schedule has no `register_as`."""
    from dspy_service.program_documents import build_document
    from dspy_service.program_store import ProgramStore

    try:
        run_id = str(UUID(str(run_id)))
    except ValueError:
        raise RegistrationRefused("the job id is not a flow-run id") from None
    run = await read_json(client, "/flow_runs/{id}", id=run_id)
    if not isinstance(run, dict):
        raise RegistrationRefused("the run no longer exists")
    schedule = await read_schedule_of(client, run)
    if schedule is None:
        raise RegistrationRefused("the run's schedule no longer exists")
    target = register_as_of(schedule.get("parameters"))
    if target is None:
        return None, "the schedule has no register_as (any more): nothing registered"
    spec = check_schedule_run(run, schedule)
    store = ProgramStore(client)
    versions = await store.versions(spec.username, target.program)
    entry = next((e for e in versions if e.job_id == run_id and e.document_sha256), None)
    if entry is None:
        try:
            document = build_document(spec, result_like(program))
        except (ValueError, TypeError, AttributeError) as exc:  # a program of the wrong shape
            raise RegistrationRefused(f"the program cannot be documented: {exc}") from None
        entry = await store.register(spec.username, target.program, run_id, document)
    await store.set_alias(spec.username, target.program, target.alias, entry.version)
    registered = {"program": target.program, "version": entry.version, "alias": target.alias}
    return registered, f"registered as {target.program} v{entry.version}; alias {target.alias!r} points to it"
