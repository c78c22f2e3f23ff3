"""Flow runs -> the contract's job objects (pure translation, no I/O).

The views read a flow run in the Prefect API's JSON shape (`Run`: what
`POST /flow_runs/filter` returns), so a page of runs is translated without validating 50
`FlowRun` models first (that validation was a third of the API's time for
GET /jobs?limit=50, py-spy). Logs likewise: the JSON of `POST /logs/filter`. A job spec
that no longer validates (a run edited in Prefect) shows as nulls, never as an error.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from api.prefect_reads import Run
from api.run_pages import RunPage
from api.status import JobStatus, job_message, state_type_of
from dspy_service import contract
from dspy_service.batch_spec import BatchSpec, is_batch_job
from dspy_service.schemas import JobSpec

SPEC_CACHE_SIZE = 2048


def contract_timestamp(value: str | None) -> str | None:
    """The API's timestamps as the contract writes them (`+00:00`, like datetime.isoformat)."""
    if not value:
        return None
    return value[:-1] + "+00:00" if value.endswith("Z") else value


def _datetime(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def format_elapsed(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    seconds = max(0, int(seconds))
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _started_at(run: Run) -> str | None:
    # Prefect stamps start_time on runs cancelled straight from Scheduled; run_count
    # tells whether the run really ever ran.
    return run.get("start_time") if run.get("run_count") else None


def _elapsed_seconds(run: Run, now: dt.datetime) -> float | None:
    started = _datetime(_started_at(run))
    if not started:
        return None
    return ((_datetime(run.get("end_time")) or now) - started).total_seconds()


def job_spec_of(run: Run) -> JobSpec | None:
    """An optimization job's spec (None for a batch prediction job: see batch_spec_of)."""
    raw = (run.get("parameters") or {}).get("job")
    if not isinstance(raw, dict) or is_batch_job(raw):
        return None
    try:
        return JobSpec.model_validate(raw)
    except ValueError:
        return None


def batch_spec_of(run: Run) -> BatchSpec | None:
    """A batch prediction job's spec (None for any other run)."""
    raw = (run.get("parameters") or {}).get("job")
    if not is_batch_job(raw):
        return None
    try:
        return BatchSpec.model_validate(raw)
    except ValueError:
        return None


def batch_fields(batch: BatchSpec) -> dict[str, Any]:
    """The view fields of a batch prediction job (same keys as an optimization job's)."""
    return {
        "kind": "batch",
        "program": {"name": batch.program, "version": batch.version},
        "username": batch.username,
        "name": batch.name,
        "module_name": batch.module_name,
        "module_kwargs": {},
        "optimizer_name": batch.optimizer_name,
        "model_name": batch.main_model.name,
        "model_settings": batch.main_model.public_settings(),
        "reflection_model_name": None,
        "prompt_model_name": None,
        "task_model_name": None,
        "column_mapping": None,
        "split_fractions": None,
        "shuffle": None,
        "seed": None,
        "optimizer_kwargs": {},
        "compile_kwargs": {},
        "dataset_source": batch.dataset_source,
    }


# Per flow run: its parameters (kept to check the entry) and the view fields that come
# from its job spec. Parameters do not change once a job is submitted, and validating the
# spec of every run of a page was a fifth of GET /jobs?limit=50; the check keeps an entry
# honest should anyone edit a run's parameters in Prefect.
_spec_fields_cache: OrderedDict[str, tuple[dict[str, Any], dict[str, Any]]] = OrderedDict()


def spec_fields(run: Run) -> dict[str, Any]:
    """The view fields derived from a run's job spec (cached per run id, bounded LRU)."""
    params = run.get("parameters") or {}
    key = str(run.get("id"))
    cached = _spec_fields_cache.get(key)
    if cached is not None and cached[0] == params:
        _spec_fields_cache.move_to_end(key)
        return cached[1]
    batch = batch_spec_of(run)
    if batch is not None:
        fields = batch_fields(batch)
        _spec_fields_cache[key] = (params, fields)
        return fields
    spec = job_spec_of(run)
    fields = {
        "username": spec.username if spec else None,
        "name": spec.name if spec else None,
        "module_name": spec.module_name if spec else None,
        "module_kwargs": spec.module_kwargs if spec else {},
        "optimizer_name": spec.optimizer_name if spec else None,
        "model_name": spec.main_model.name if spec else None,
        "model_settings": spec.main_model.public_settings() if spec else {},
        "reflection_model_name": spec.reflection_model.name if spec and spec.reflection_model else None,
        "prompt_model_name": spec.prompt_model.name if spec and spec.prompt_model else None,
        "task_model_name": spec.task_model.name if spec and spec.task_model else None,
        "column_mapping": spec.column_mapping.model_dump() if spec else None,
        # summary only
        "split_fractions": spec.split_fractions.model_dump() if spec else None,
        "shuffle": spec.shuffle if spec else None,
        "seed": spec.seed if spec else None,
        "optimizer_kwargs": spec.optimizer_kwargs if spec else {},
        "compile_kwargs": spec.compile_kwargs if spec else {},
        "dataset_source": spec.dataset_source if spec else None,
    }
    _spec_fields_cache[key] = (params, fields)
    if len(_spec_fields_cache) > SPEC_CACHE_SIZE:
        _spec_fields_cache.popitem(last=False)
    return fields


COMMON_SPEC_FIELDS = (
    "username",
    "name",
    "module_name",
    "module_kwargs",
    "optimizer_name",
    "model_name",
    "model_settings",
    "reflection_model_name",
    "prompt_model_name",
    "task_model_name",
    "column_mapping",
)
SUMMARY_SPEC_FIELDS = ("split_fractions", "shuffle", "seed", "optimizer_kwargs", "compile_kwargs")


def status_message(run: Run, status: JobStatus) -> str | None:
    state = run.get("state")
    if status in (JobStatus.failed, JobStatus.cancelled) and state:
        return job_message(state_type_of(run), state.get("message"))
    return None


def common_fields(
    run: Run, status: JobStatus, now: dt.datetime | None = None, message: str | None = None
) -> dict[str, Any]:
    """`message`, when given, replaces the state's (see gateway.Outcome)."""
    now = now or dt.datetime.now(dt.UTC)
    spec = spec_fields(run)
    labels = run.get("labels") or {}
    parameters = run.get("parameters") or {}
    dataset_ref = parameters.get("dataset_ref") or {}
    remaining = contract.number_label(labels, contract.ESTIMATED_REMAINING)
    if remaining is not None and remaining < 0:  # contract.UNKNOWN_REMAINING
        remaining = None
    return {
        "job_id": str(run["id"]),
        "status": status.value,
        "message": message or status_message(run, status),
        "created_at": contract_timestamp(run.get("created")),
        "started_at": contract_timestamp(_started_at(run)),
        "completed_at": contract_timestamp(run.get("end_time")) if status.terminal else None,
        "elapsed": format_elapsed(_elapsed_seconds(run, now)),
        "estimated_remaining": format_elapsed(remaining) if status.active and remaining is not None else None,
        **{name: spec[name] for name in COMMON_SPEC_FIELDS},
        "dataset_rows": labels.get(contract.DATASET_ROWS) or dataset_ref.get("rows"),
        "latest_metrics": contract.decode_json_label(labels, contract.LATEST_METRICS, {}),
        "prefect_state": run.get("state_name"),
        "schedule_id": labels.get(contract.SCHEDULE_ID) or parameters.get("schedule_id"),
        # When a pending job may start: runs of a schedule are created ahead of their time.
        "scheduled_start_at": (
            contract_timestamp(run.get("expected_start_time")) if status is JobStatus.pending else None
        ),
        # A batch prediction job says so and names its program version (optimization jobs: no such keys).
        **({"kind": "batch", "program": spec["program"]} if spec.get("kind") == "batch" else {}),
    }


def summary(run: Run, status: JobStatus, message: str | None = None) -> dict[str, Any]:
    spec = spec_fields(run)
    labels = run.get("labels") or {}
    return {
        **common_fields(run, status, message=message),
        **{name: spec[name] for name in SUMMARY_SPEC_FIELDS},
        "progress_count": int(contract.number_label(labels, contract.PROGRESS_COUNT) or 0),
        "log_count": int(contract.number_label(labels, contract.LOG_COUNT) or 0),
        "evaluation_errors": contract.decode_json_label(labels, contract.EVALUATION_ERRORS, None),
        "termination_reason": labels.get(contract.TERMINATION_REASON),
        "budget": contract.decode_json_label(labels, contract.BUDGET, None),
        "baseline_test_metric": contract.number_label(labels, contract.BASELINE_TEST_METRIC),
        "optimized_test_metric": contract.number_label(labels, contract.OPTIMIZED_TEST_METRIC),
        "usage": contract.decode_json_label(labels, contract.USAGE, None),
        "dataset_source": spec["dataset_source"],
        "dataset_sha256": labels.get(contract.DATASET_SHA256),
        "champion": champion_summary(labels),
    }


def champion_summary(labels: dict[str, Any]) -> dict[str, Any] | None:
    """The champion gate's decision for a run of a schedule (full record: result.details)."""
    promoted = labels.get(contract.CHAMPION_PROMOTED)
    if not isinstance(promoted, bool):
        return None
    return {
        "promoted": promoted,
        "champion_score": contract.number_label(labels, contract.CHAMPION_SCORE),
        "previous_champion_job_id": labels.get(contract.CHAMPION_PREVIOUS),
    }


def log_entry(log: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "timestamp": contract_timestamp(log["timestamp"]),
        "level": logging.getLevelName(log["level"]),
        "logger": log["name"],
        "message": log["message"],
    }


def split_logs(logs: list[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(log entries, progress events): progress events travel as logs of one logger."""
    entries, events = [], []
    for log in logs:
        event = contract.decode_progress(log["name"], log["message"])
        if event is not None:
            events.append(event)
        else:
            entries.append(log_entry(log))
    return entries, events


def detail(
    run: Run,
    status: JobStatus,
    logs: tuple[list[dict[str, Any]], list[dict[str, Any]]],
    result: dict[str, Any] | None,
    message: str | None = None,
) -> dict[str, Any]:
    """`logs` is what `split_logs` made of the run's logs (the gateway may have it cached)."""
    entries, events = logs
    job = common_fields(run, status, message=message)
    if events and not job["latest_metrics"]:
        job["latest_metrics"] = events[-1].get("metrics", {})
    if result is not None and not result.get("run_log"):
        result = {**result, "run_log": entries}
    return {**job, "progress_events": events, "logs": entries, "result": result}


def program_source(run: Run) -> dict[str, Any] | None:
    """What rebuilds a job's program around its JSON state: the module and the signature's
    code (the metric's too, to re-score it). The user's own code, shown only to its owner."""
    spec = job_spec_of(run)
    if spec is None:
        return None
    return {
        "module_name": spec.module_name,
        "module_kwargs": spec.module_kwargs,
        "signature_code": spec.signature_code,
        "metric_code": spec.metric_code,
    }


def page(runs: RunPage, limit: int, offset: int) -> dict[str, Any]:
    """GET /jobs and GET /schedules/{id}/runs: a page of job summaries."""
    items = [summary(run, status) for run, status in zip(runs.runs, runs.statuses(), strict=True)]
    return {"items": items, "total": runs.total, "limit": limit, "offset": offset}


def submitted(run: Run, status: JobStatus) -> dict[str, Any]:
    """The answer to a submission (POST /run, POST /schedules/{id}/run): the new job.
    A run of a schedule also names its schedule."""
    spec = spec_fields(run)
    body: dict[str, Any] = {
        "job_id": str(run["id"]),
        "status": status.value,
        "created_at": contract_timestamp(run.get("created")),
        "username": spec["username"],
        "module_name": spec["module_name"],
        "optimizer_name": spec["optimizer_name"],
    }
    schedule_id = (run.get("parameters") or {}).get("schedule_id")
    if schedule_id:
        body["schedule_id"] = schedule_id
    if spec.get("kind") == "batch":
        body.update(kind="batch", program=spec["program"], dataset_rows=((run.get("parameters") or {}).get(
            "dataset_ref") or {}).get("rows"))
    return body
