"""The batch prediction flow: one batch job = one run of `batch_predict` (deployment
`batch-predict/<DSPY_SERVICE_BATCH_DEPLOYMENT>`, same work pool, job runtime and sandbox
as optimization jobs).

Task runs: build-language-models (the version's model config, its credential handed in by
the supervisor), load-user-code (the version's program rebuilt from its document, without
pickle and without any saved LM), predict-rows (every row; one progress bar over the rows).
The flow's JSON result is `{"kind", "program", "summary": {rows, succeeded, failed, usage},
"results": [{"row", "outputs"} | {"row", "error"}, ...]}`; GET /jobs/{id}/artifact turns
`results` into JSONL. Rows that fail are results, not failures; the run fails (with a
message in the user's terms) when the rows, the program or the LM cannot be loaded.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Failed

from dspy_service import contract
from dspy_service.batch_spec import BatchSpec, batch_summary, missing_input_field, scrub_errors, strip_lms
from dspy_service.client.program import build_program
from dspy_service.contract import Stage
from dspy_service.errors import JobError
from dspy_service.schemas import DatasetRef
from dspy_service.settings import BATCH_FLOW_NAME, get_settings
from dspy_service.storage import load_dataset
from flows.telemetry.job_logging import job_logging
from flows.telemetry.labels import publish_labels
from flows.telemetry.observe import observe_job, watch_usage
from tasks import stage
from tasks.batch import predict_rows
from tasks.data import read_dataset_source
from tasks.language_models import build_language_models
from tasks.stopping import install_stop_handler, stop_requested, wait_to_be_stopped

logger = logging.getLogger("dspy_service.flow")


def stored(ref: DatasetRef, what: str) -> Any:
    try:
        return load_dataset(ref)
    except FileNotFoundError:
        raise JobError(
            f"the job's stored {what} {ref.url} is gone; is DSPY_SERVICE_STORAGE_URL shared between the API "
            "and this worker?",
            field="dataset" if what == "rows" else "program",
        ) from None


def batch_rows(job: BatchSpec, dataset: list[dict[str, Any]] | None, dataset_ref: DatasetRef | None) -> list[dict]:
    """The rows to predict (inline, stored, or read from the `dataset_source` now), each
    checked for the program's input fields."""
    if dataset is not None:
        rows = dataset
    elif dataset_ref is not None:
        rows = stored(dataset_ref, "rows")
    elif job.dataset_source:
        rows = read_dataset_source(job.dataset_source, job.dataset_format)
    else:
        raise JobError("the job has no dataset", field="dataset")
    missing = missing_input_field(rows, job.input_fields)
    if missing:
        field, index = missing
        raise JobError(
            f"dataset row {index} has no input field {field!r} (the program's inputs: {', '.join(job.input_fields)})",
            field=field,
        )
    return rows


@stage(Stage.LOAD_USER_CODE)
def load_program(document: dict[str, Any]) -> Any:
    """The version's program, rebuilt from its signature code and JSON state (no saved LM)."""
    try:
        return build_program(document, strip_lms(document.get("program_state") or {}))
    except Exception as exc:
        raise JobError(f"the program could not be rebuilt: {type(exc).__name__}: {exc}", field="program") from exc


def run_batch(job: BatchSpec, rows: list[dict[str, Any]], document: dict[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    stage_name = Stage.BUILD_LMS
    try:
        lms = build_language_models(job)
        watch_usage(lms.meter)
        stage_name = Stage.LOAD_USER_CODE
        program = load_program(document)
        stage_name = Stage.PREDICT
        results = predict_rows(program, lms.main, rows, job.input_fields, job.output_fields, job.num_threads)
        results = scrub_errors(results, lms.secrets)  # a provider's message may quote a key
    except JobError:
        raise
    except Exception as exc:
        logger.error("%s failed:\n%s", stage_name, traceback.format_exc())
        raise JobError(f"{stage_name} failed: {type(exc).__name__}: {exc}") from exc
    summary = batch_summary(results, lms.meter.snapshot()["total"])
    return {
        "kind": contract.BATCH_JOB_KIND,
        "program": {"name": job.program, "version": job.version},
        "summary": {**summary, "runtime_seconds": round(time.monotonic() - started, 3)},
        "results": results,
    }


# log_prints=False: job_logging logs prints from every thread, with a cap.
@flow(name=BATCH_FLOW_NAME, log_prints=False, validate_parameters=True, persist_result=True, result_serializer="json")
def batch_predict(
    job: BatchSpec,
    program_ref: DatasetRef,
    dataset_ref: DatasetRef | None = None,
    dataset: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Predict every row of a dataset with one registered program version.

    `program_ref` is the API's stored copy of the version document; `dataset_ref` the
    rows it stored (`dataset`: inline rows for local runs); a job with a `dataset_source`
    reads it now."""
    run_logger = get_run_logger()
    install_stop_handler()
    settings = get_settings()
    print_limit = int(settings.job_print_limit_mb * 1024 * 1024)
    with job_logging(current_flow_run.id, settings.log_level, print_limit_bytes=print_limit):
        try:
            document = stored(program_ref, "program")
            rows = batch_rows(job, dataset, dataset_ref)
            publish_labels(current_flow_run.id, {contract.DATASET_ROWS: len(rows)})
            run_logger.info(
                "batch: %d rows through %s v%d on model %s, %d threads",
                len(rows),
                job.program,
                job.version,
                job.main_model.name,
                job.num_threads,
            )
            with observe_job(current_flow_run.id, job):
                result = run_batch(job, rows, document)
        except JobError as exc:
            if stop_requested():
                wait_to_be_stopped()
            run_logger.error("job failed: %s", exc)
            return Failed(message=str(exc))
        summary = result["summary"]
        run_logger.info(
            "batch finished: %d rows, %d succeeded, %d failed", summary["rows"], summary["succeeded"], summary["failed"]
        )
        publish_labels(current_flow_run.id, {contract.USAGE: summary["usage"]})
        return result
