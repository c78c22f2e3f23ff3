"""Prefect deployment schedules -> the /schedules JSON objects (pure translation, no I/O)."""

from __future__ import annotations

from typing import Any

from prefect.client.schemas.objects import DeploymentSchedule
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

from api.prefect_reads import Run
from api.views import contract_timestamp
from dspy_service.schedule_registration import register_as_of
from dspy_service.schemas import MODEL_ROLES, JobSpec


def _iso(value: Any) -> str | None:
    return value.isoformat() if value else None


def public_job(spec: JobSpec) -> dict[str, Any]:
    """The stored job payload, its model configs as their allow-listed settings
    (`ModelConfig.public_settings`), without the service's secret references."""
    job = spec.wire()
    job.pop("secret_refs", None)
    configs = spec.lm_configs()
    for role in MODEL_ROLES:
        config = configs.get(role)
        job[JobSpec.role_field(role)] = config.public_view() if config else None
    return job


def cadence(schedule: DeploymentSchedule) -> dict[str, Any]:
    inner = schedule.schedule
    if isinstance(inner, CronSchedule):
        return {"cron": inner.cron, "interval_seconds": None, "timezone": inner.timezone}
    if isinstance(inner, IntervalSchedule):
        return {"cron": None, "interval_seconds": inner.interval.total_seconds(), "timezone": inner.timezone}
    # An RRule schedule made in the Prefect UI: show it as Prefect describes it.
    return {"cron": None, "interval_seconds": None, "timezone": getattr(inner, "timezone", None),
            "prefect_schedule": inner.model_dump(mode="json")}


def schedule_spec(schedule: DeploymentSchedule) -> JobSpec | None:
    raw = (schedule.parameters or {}).get("job")
    try:
        return JobSpec.model_validate(raw) if isinstance(raw, dict) else None
    except ValueError:
        return None


def schedule_view(schedule: DeploymentSchedule) -> dict[str, Any]:
    spec = schedule_spec(schedule)
    ref = (schedule.parameters or {}).get("dataset_ref") or {}
    return {
        "schedule_id": str(schedule.id),
        "name": schedule.slug,
        "active": schedule.active,
        **cadence(schedule),
        "created_at": _iso(schedule.created),
        "updated_at": _iso(schedule.updated),
        "username": spec.username if spec else None,
        "module_name": spec.module_name if spec else None,
        "optimizer_name": spec.optimizer_name if spec else None,
        "model_name": spec.main_model.name if spec else None,
        "dataset_source": spec.dataset_source if spec else None,
        "dataset_rows": ref.get("rows"),  # inline rows stored with the schedule; null for a source
        "job": public_job(spec) if spec else None,
        "register_as": register_as.model_dump() if (register_as := register_as_of(schedule.parameters)) else None,
        "deployment_id": str(schedule.deployment_id) if schedule.deployment_id else None,
    }


def schedule_detail(
    schedule: DeploymentSchedule, champion: dict[str, Any] | None, next_run: Run | None
) -> dict[str, Any]:
    return {
        **schedule_view(schedule),
        "next_run_at": contract_timestamp(next_run.get("expected_start_time")) if next_run else None,
        "champion": champion,
    }
