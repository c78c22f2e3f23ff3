"""Flow runs -> the contract's job objects (pure translation, no I/O)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from prefect.client.schemas.objects import FlowRun, Log

from dspy_service import run_labels
from dspy_service.schemas import JobSpec
from dspy_service.status import JobStatus, job_message

PROGRESS_LOGGER = "dspy_service.progress"
PROGRESS_PREFIX = "progress "


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def format_elapsed(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    seconds = max(0, int(seconds))
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _started_at(flow_run: FlowRun) -> dt.datetime | None:
    # Prefect stamps start_time on runs cancelled straight from Scheduled; run_count
    # tells whether the run really ever ran.
    return flow_run.start_time if flow_run.run_count else None


def _elapsed_seconds(flow_run: FlowRun, now: dt.datetime) -> float | None:
    started = _started_at(flow_run)
    if not started:
        return None
    return ((flow_run.end_time or now) - started).total_seconds()


def job_spec_of(flow_run: FlowRun) -> JobSpec | None:
    raw = (flow_run.parameters or {}).get("job")
    if not isinstance(raw, dict):
        return None
    try:
        return JobSpec.model_validate(raw)
    except ValueError:
        return None


def status_message(flow_run: FlowRun, status: JobStatus) -> str | None:
    if status in (JobStatus.failed, JobStatus.cancelled) and flow_run.state is not None:
        return job_message(flow_run.state_type, flow_run.state.message)
    return None


def common_fields(flow_run: FlowRun, status: JobStatus, now: dt.datetime | None = None) -> dict[str, Any]:
    now = now or dt.datetime.now(dt.UTC)
    spec = job_spec_of(flow_run)
    labels = dict(flow_run.labels or {})
    dataset_ref = (flow_run.parameters or {}).get("dataset_ref") or {}
    remaining = run_labels.number(labels, run_labels.ESTIMATED_REMAINING)
    return {
        "job_id": str(flow_run.id),
        "status": status.value,
        "message": status_message(flow_run, status),
        "created_at": _iso(flow_run.created),
        "started_at": _iso(_started_at(flow_run)),
        "completed_at": _iso(flow_run.end_time) if status.terminal else None,
        "elapsed": format_elapsed(_elapsed_seconds(flow_run, now)),
        "estimated_remaining": format_elapsed(remaining) if status.active and remaining is not None else None,
        "username": spec.username if spec else None,
        "module_name": spec.module_name if spec else None,
        "module_kwargs": spec.module_kwargs if spec else {},
        "optimizer_name": spec.optimizer_name if spec else None,
        "model_name": spec.main_model.name if spec else None,
        "model_settings": spec.main_model.public_settings() if spec else {},
        "reflection_model_name": spec.reflection_model.name if spec and spec.reflection_model else None,
        "prompt_model_name": spec.prompt_model.name if spec and spec.prompt_model else None,
        "task_model_name": spec.task_model.name if spec and spec.task_model else None,
        "column_mapping": spec.column_mapping.model_dump() if spec else None,
        "dataset_rows": labels.get(run_labels.DATASET_ROWS) or dataset_ref.get("rows"),
        "latest_metrics": run_labels.decode_json(labels, run_labels.LATEST_METRICS, {}),
        "prefect_state": flow_run.state_name,
        "schedule_id": labels.get(run_labels.SCHEDULE_ID) or (flow_run.parameters or {}).get("schedule_id"),
        # When a pending job may start: runs of a schedule are created ahead of their time.
        "scheduled_start_at": _iso(flow_run.expected_start_time) if status is JobStatus.pending else None,
    }


def summary(flow_run: FlowRun, status: JobStatus) -> dict[str, Any]:
    spec = job_spec_of(flow_run)
    labels = dict(flow_run.labels or {})
    return {
        **common_fields(flow_run, status),
        "split_fractions": spec.split_fractions.model_dump() if spec else None,
        "shuffle": spec.shuffle if spec else None,
        "seed": spec.seed if spec else None,
        "optimizer_kwargs": spec.optimizer_kwargs if spec else {},
        "compile_kwargs": spec.compile_kwargs if spec else {},
        "progress_count": int(run_labels.number(labels, run_labels.PROGRESS_COUNT) or 0),
        "log_count": int(run_labels.number(labels, run_labels.LOG_COUNT) or 0),
        "baseline_test_metric": run_labels.number(labels, run_labels.BASELINE_TEST_METRIC),
        "optimized_test_metric": run_labels.number(labels, run_labels.OPTIMIZED_TEST_METRIC),
        "usage": run_labels.decode_json(labels, run_labels.USAGE, None),
        "dataset_source": spec.dataset_source if spec else None,
        "dataset_sha256": labels.get(run_labels.DATASET_SHA256),
        "champion": champion_summary(labels),
    }


def champion_summary(labels: dict[str, Any]) -> dict[str, Any] | None:
    """The champion gate's decision for a run of a schedule (full record: result.details)."""
    promoted = labels.get(run_labels.CHAMPION_PROMOTED)
    if not isinstance(promoted, bool):
        return None
    return {
        "promoted": promoted,
        "champion_score": run_labels.number(labels, run_labels.CHAMPION_SCORE),
        "previous_champion_job_id": labels.get(run_labels.CHAMPION_PREVIOUS),
    }


def log_entry(log: Log) -> dict[str, Any]:
    return {
        "timestamp": _iso(log.timestamp),
        "level": logging.getLevelName(log.level),
        "logger": log.name,
        "message": log.message,
    }


def split_logs(logs: list[Log]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(log entries, progress events): progress events travel as logs of one logger."""
    entries, events = [], []
    for log in logs:
        if log.name == PROGRESS_LOGGER and log.message.startswith(PROGRESS_PREFIX):
            try:
                events.append(json.loads(log.message[len(PROGRESS_PREFIX) :]))
            except ValueError:
                entries.append(log_entry(log))
        else:
            entries.append(log_entry(log))
    return entries, events


def detail(
    flow_run: FlowRun, status: JobStatus, logs: list[Log], result: dict[str, Any] | None
) -> dict[str, Any]:
    entries, events = split_logs(logs)
    job = common_fields(flow_run, status)
    if events and not job["latest_metrics"]:
        job["latest_metrics"] = events[-1].get("metrics", {})
    if result is not None and not result.get("run_log"):
        result = {**result, "run_log": entries}
    return {**job, "progress_events": events, "logs": entries, "result": result}
