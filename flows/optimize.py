"""The optimization flow: one job = one run of `optimize_program`.

One task run per stage (`contract.Stage`, in order: load-and-split-data,
build-language-models, load-user-code, compile-program, evaluate-programs,
serialize-program-artifact, and for runs of a schedule champion-gate), each shown in the
Prefect UI. The flow returns the contract's `result` object; any failure
ends the run Failed with a message in the user's terms.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import traceback
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Failed

from dspy_service import contract
from dspy_service.contract import Stage
from dspy_service.errors import JobError, out_of_memory_message
from dspy_service.job_result import JobResult, SplitCounts
from dspy_service.schemas import DatasetRef, JobSpec
from dspy_service.settings import FLOW_NAME, get_settings
from dspy_service.storage import load_dataset
from flows.telemetry.artifacts import publish_result_artifacts
from flows.telemetry.job_logging import job_logging
from flows.telemetry.labels import champion_labels, mark_schedule_run, publish_labels, shared_label_client
from flows.telemetry.observe import observe_job, watch_splits, watch_usage
from tasks.artifact import program_artifact, serialize_program_artifact
from tasks.champion import ChampionDecision, champion_gate
from tasks.champion_registration import program_record
from tasks.checkpoint import keep_compiled_program, refresh_kept_program
from tasks.compile import compile_program
from tasks.data import load_and_split_data
from tasks.evaluate import evaluate_programs
from tasks.language_models import build_language_models, explain_failure
from tasks.stopping import install_stop_handler, stop_requested, wait_to_be_stopped
from tasks.user_code import load_user_code

logger = logging.getLogger("dspy_service.flow")


def where_running() -> str:
    """Where this engine runs, for the job's log; a sandboxed engine's pid is its namespace's
    (its supervisor logs the host's)."""
    if os.environ.get(contract.SANDBOXED_ENV):
        return "in its sandbox"
    return f"process {os.getpid()} on {socket.gethostname()}"


def resolve_rows(
    job: JobSpec, dataset: list[dict[str, Any]] | None, dataset_ref: DatasetRef | None
) -> list[dict[str, Any]] | None:
    """Inline or stored rows; None for a `dataset_source`, which load-and-split-data reads."""
    if dataset is not None:
        return dataset
    if dataset_ref:
        try:
            return load_dataset(dataset_ref)
        except FileNotFoundError:
            raise JobError(
                f"the job's stored dataset {dataset_ref.url} is gone; is DSPY_SERVICE_STORAGE_URL "
                "shared between the API and this worker?",
                field="dataset",
            ) from None
    if job.dataset_source:
        return None
    raise JobError("the job has no dataset", field="dataset")


class ProgramKept(JobError):
    """The job failed after compile; `kept` is its result with the compiled program and
    the metrics that exist, stored with the Failed state (GET /jobs/{id}/artifact)."""

    def __init__(self, message: str, kept: dict[str, Any] | None):
        super().__init__(message)
        self.kept = kept


def stage_failure(stage: str, exc: BaseException, meter: Any = None) -> str:
    """A failed stage's message in a user's terms (a JobError's own message as it is),
    led by the LM errors behind it when `meter` (the job's UsageMeter) recorded any."""
    if isinstance(exc, JobError):
        return str(exc)
    logger.error("%s failed:\n%s", stage, "".join(traceback.format_exception(exc)))
    if isinstance(exc, MemoryError):
        return f"{stage} failed: {out_of_memory_message()}"
    return explain_failure(f"{stage} failed: {type(exc).__name__}: {exc}", exc, meter)


def kept_result(
    job: JobSpec, message: str, compiled: Any, splits: Any, lms: Any, user_code: Any, exc: BaseException, started: float
) -> dict[str, Any] | None:
    """What a job that failed after compile keeps: the compiled program (its JSON state
    at least) and the metrics that exist. None when not even the state can be saved."""
    try:
        artifact = program_artifact(compiled.optimized, lms.secrets, state_only_on_error=True)
    except Exception:  # noqa: BLE001 - nothing to keep; the failure itself is reported
        logger.exception("the compiled program could not be kept")
        return None
    errors = getattr(exc, "errors", None)
    details = {"failed": message, **({"evaluation_errors": errors} if errors else {})}
    return compiled_result(job, splits, lms, user_code, compiled, artifact, started, details=details).model_dump(
        mode="json"
    )


def compiled_result(
    job: JobSpec,
    splits: Any,
    lms: Any,
    user_code: Any,
    compiled: Any,
    artifact: Any,
    started: float,
    scores: Any = None,
    details: dict[str, Any] | None = None,
    run_log: list[dict[str, Any]] | None = None,
) -> JobResult:
    """The result of a job that compiled its program: with `scores` when it was evaluated
    (a success), without (a failure that keeps its program)."""
    return JobResult(
        module_name=job.module_name,
        optimizer_name=job.optimizer_name,
        metric_name=user_code.metric_name,
        split_counts=SplitCounts(**splits.counts),
        baseline_test_metric=scores.baseline if scores else None,
        optimized_test_metric=scores.optimized if scores else None,
        metric_improvement=scores.improvement if scores else None,
        optimization_metadata=compiled.optimization_metadata,
        details={
            "dataset_rows": splits.rows,
            "dataset_sha256": splits.content_sha256,
            "seed": splits.seed,
            "compile_seconds": compiled.compile_seconds,
            **compiled.termination,
            "usage": lms.meter.snapshot(),
            **({"budget": lms.budget.as_details()} if lms.budget is not None else {}),
            **(details or {}),
        },
        program_artifact=artifact,
        runtime_seconds=round(time.monotonic() - started, 3),
        run_log=run_log or [],
    )


def keep_compiled(job: JobSpec, splits: Any, lms: Any, user_code: Any, compiled: Any, started: float) -> None:
    """Before evaluation: what the job keeps if it is cancelled, runs out of time or is killed
    from here on (tasks/checkpoint.py), shaped as what a failure keeps (`kept_result`)."""

    def result_of(artifact: Any, details: dict[str, Any]) -> dict[str, Any]:
        result = compiled_result(job, splits, lms, user_code, compiled, artifact, started, details=details)
        return result.model_dump(mode="json")

    keep_compiled_program(current_flow_run.id, compiled.optimized, lms.secrets, result_of)


def run_job(job: JobSpec, rows: list[dict[str, Any]] | None, run_log: list[dict[str, Any]],
            schedule_id: str | None = None, register: bool = False) -> JobResult:
    started = time.monotonic()
    stage = Stage.LOAD_DATA
    champion: ChampionDecision | None = None
    compiled = lms = None
    try:
        splits = load_and_split_data(job, rows)
        watch_splits(splits.counts)
        publish_labels(
            current_flow_run.id,
            {contract.DATASET_ROWS: splits.rows, contract.DATASET_SHA256: splits.content_sha256},
        )
        stage = Stage.BUILD_LMS
        lms = build_language_models(job)
        watch_usage(lms.meter)
        stage = Stage.LOAD_USER_CODE
        user_code = load_user_code(job, splits.train[0])
        stage = Stage.COMPILE
        compiled = compile_program(job, splits, lms, user_code)
        keep_compiled(job, splits, lms, user_code, compiled, started)
        stage = Stage.EVALUATE
        scores = evaluate_programs(compiled, splits, lms, user_code, job.num_threads, job.evaluate_baseline)
        stage = Stage.SERIALIZE
        artifact = serialize_program_artifact(compiled.optimized, lms.secrets)
        if schedule_id:
            stage = Stage.CHAMPION_GATE
            champion = champion_gate(
                schedule_id, str(current_flow_run.id), scores.optimized, splits, lms, job, user_code,
                program_record(artifact, scores, splits, user_code.metric_name) if register else None,
            )
    except Exception as exc:
        message = stage_failure(stage, exc, lms.meter if lms is not None else None)
        if lms is not None and lms.breaker.open:  # the cause, not what the missing LM broke
            message = f"{stage} failed: {lms.breaker.message()}"
        if compiled is None or stop_requested():
            if lms is not None and lms.budget is not None:  # /summary's budget: how far the job got
                publish_labels(current_flow_run.id, {contract.BUDGET: lms.budget.as_details()})
            raise exc if isinstance(exc, JobError) and str(exc) == message else JobError(message) from exc
        raise ProgramKept(message, kept_result(job, message, compiled, splits, lms, user_code, exc, started)) from exc
    champion_details = {"schedule_id": schedule_id, "champion": champion.as_details()} if champion else {}
    return compiled_result(
        job, splits, lms, user_code, compiled, artifact, started,
        scores=scores, details={**scores.as_details(), **champion_details}, run_log=run_log,
    )


# log_prints=False: job_logging logs prints from every thread, with a cap (Prefect's has none).
@flow(name=FLOW_NAME, log_prints=False, validate_parameters=True, persist_result=True, result_serializer="json")
def optimize_program(
    job: JobSpec,
    dataset: list[dict[str, Any]] | None = None,
    dataset_ref: DatasetRef | None = None,
    schedule_id: str | None = None,
    register_as: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Optimize a DSPy program: split data, build LMs, load user code, compile, evaluate, save.

    `dataset` holds inline rows (local runs); the API passes `dataset_ref`, the URL of
    rows it stored in shared storage, so flow-run parameters stay small; a job with a
    `dataset_source` reads it at run time. `schedule_id` is set on runs of a schedule
    (/schedules): they end with the champion gate. `register_as` ({program, alias}) is set on
    runs of a schedule that registers its promoted runs; the trusted side reads the
    schedule's own (dspy_service/schedule_registration.py), this one only says to ask.
    """
    run_logger = get_run_logger()
    install_stop_handler()  # the job process wrapper asks for a cooperative stop first
    if schedule_id:
        mark_schedule_run(current_flow_run.id, job.username, schedule_id, notify=bool(job.notify_url))
    settings = get_settings()
    print_limit = int(settings.job_print_limit_mb * 1024 * 1024)
    with (
        job_logging(current_flow_run.id, settings.log_level, print_limit_bytes=print_limit) as capture,
        shared_label_client(),
    ):
        try:
            rows = resolve_rows(job, dataset, dataset_ref)
            run_logger.info(
                "job: %s + %s on %s, model %s (%s)",
                job.module_name,
                job.optimizer_name,
                f"{len(rows)} rows" if rows is not None else f"dataset_source {job.dataset_source}",
                job.main_model.name,
                where_running(),
            )
            with observe_job(current_flow_run.id, job):
                result = run_job(job, rows, capture.entries, schedule_id, register=bool(register_as))
        except JobError as exc:
            if stop_requested():
                # Cancelled or out of time: the wrapper states the reason and kills this
                # process; an error caused by the stop itself must not become the message.
                refresh_kept_program(current_flow_run.id)  # the usage paid since compile
                wait_to_be_stopped()
            return failed(exc, len(capture.entries))
        return finished(result, len(capture.entries))


def failed(exc: JobError, log_count: int) -> Failed:
    """The Failed state of a job, with what it kept (ProgramKept) as its stored result."""
    run_logger = get_run_logger()
    run_logger.error("job failed: %s", exc)
    kept = exc.kept if isinstance(exc, ProgramKept) else None
    details = (kept or {}).get("details") or {}
    if kept:
        run_logger.info("the compiled program is kept: GET /jobs/{id}/artifact returns it")
    publish_labels(
        current_flow_run.id,
        {
            contract.LOG_COUNT: log_count,  # /summary's log_count, the failure's lines included
            contract.USAGE: (details.get("usage") or {}).get("total"),
            contract.EVALUATION_ERRORS: details.get("evaluation_errors"),
            contract.BUDGET: details.get("budget"),
        },
    )
    return Failed(message=str(exc), data=kept) if kept else Failed(message=str(exc))


def finished(result: JobResult, log_count: int) -> dict[str, Any]:
    get_run_logger().info(
        "job finished: baseline %s -> optimized %s on %d test examples",
        result.baseline_test_metric,
        result.optimized_test_metric,
        result.split_counts.test,
    )
    publish_labels(
        current_flow_run.id,
        {
            contract.BASELINE_TEST_METRIC: result.baseline_test_metric,
            contract.OPTIMIZED_TEST_METRIC: result.optimized_test_metric,
            contract.USAGE: result.details["usage"]["total"],
            contract.LOG_COUNT: log_count,
            contract.EVALUATION_ERRORS: result.details.get("evaluation_errors") or None,
            contract.TERMINATION_REASON: result.details.get("termination_reason"),
            contract.BUDGET: result.details.get("budget"),
            contract.SECONDS_PER_EXAMPLE: result.details.get("seconds_per_example"),
            **champion_labels(result.details.get("champion")),
        },
    )
    publish_result_artifacts(current_flow_run.id, result)
    return result.model_dump(mode="json")
