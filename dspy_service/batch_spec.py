"""Batch prediction: the POST /programs/{name}/batch body, the job's `job` parameter and
the pure checks and formats around it (no Prefect, no DSPy).

A batch job is a flow run of the batch deployment (flows/batch_predict.py). Its
parameters are small and secret-free: `job` (a `BatchSpec`: owner, program name and
version, the version's model config with a credential NAME, its input fields, threads,
and for a `dataset_source` the source), `dataset_ref` (rows stored like POST /run's) and
`program_ref` (a stored copy of the version document). `BatchSpec` offers what the job
runtime, the secret resolution and the LM builder use of a JobSpec (`username`,
`lm_configs`, `with_configs`, `role_field`, `secret_refs`, `dataset_source`,
`timeout_seconds`, `notify_url`), so the same sandbox, secrets and metering serve both.

Failures: pydantic's ValidationError for a bad body (the API answers 422);
`missing_input_field` returns the first missing field and row instead of raising.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from dspy_service.contract import BATCH_JOB_KIND, CREDENTIAL_NAME_PATTERN
from dspy_service.dataset_source import DatasetFormat, check_source
from dspy_service.schemas import JobSpec, ModelConfig, SecretRefs


class BatchRequest(BaseModel):
    """POST /programs/{name}/batch: rows (or a `dataset_source`) and the version to run."""

    model_config = ConfigDict(extra="forbid")

    dataset: list[dict[str, Any]] | None = Field(
        default=None, min_length=1, description="Inline rows; each must carry the program's input fields."
    )
    dataset_source: str | None = Field(
        default=None, description="Absolute file path or http(s) URL of a CSV, JSONL, JSON or Parquet file."
    )
    dataset_format: DatasetFormat | None = Field(default=None, description="Format of dataset_source.")
    version: int | None = Field(default=None, ge=1, description="A version number; default: the alias.")
    alias: str | None = Field(default=None, max_length=40, description="An alias; default: `latest`.")
    num_threads: int | None = Field(default=None, ge=1, description="Rows predicted at once (default: the service's).")
    credential: str | None = Field(
        default=None,
        pattern=CREDENTIAL_NAME_PATTERN,
        description="One of your credentials to call the version's model with, instead of the one its model "
        "config names (a version registered from a job with an inline key names none).",
    )
    name: str | None = Field(default=None, max_length=200, description="Your label for the job.")
    timeout_seconds: float | None = Field(default=None, gt=0, description="Wall-clock limit of the job.")

    @field_validator("dataset_source")
    @classmethod
    def _source_is_readable(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        value = value.strip()
        check_source(value, info.data.get("dataset_format"))
        return value

    @model_validator(mode="after")
    def _one_dataset_one_version(self) -> BatchRequest:
        if (self.dataset is None) == (self.dataset_source is None):
            raise ValueError("give exactly one of `dataset` (inline rows) and `dataset_source` (a file path or URL)")
        if self.version is not None and self.alias is not None:
            raise ValueError("give at most one of `version` and `alias`")
        return self


class BatchSpec(BaseModel):
    """A batch prediction job as its flow run's `job` parameter (references only, no rows)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, protected_namespaces=())

    @property
    def budget(self) -> None:
        """A batch prediction has no budget (POST /programs/{name}/batch takes none); the
        LM layer (tasks/language_models.py) reads this as it reads a job's."""
        return None

    kind: Literal["batch-predict"] = BATCH_JOB_KIND
    username: str = Field(min_length=1, max_length=200)
    name: str | None = Field(default=None, max_length=200)
    program: str = Field(min_length=1)
    version: int = Field(ge=1)
    module_name: str | None = None
    input_fields: list[str] = Field(default_factory=list)
    output_fields: list[str] = Field(default_factory=list)
    main_model: ModelConfig = Field(alias="model_config")
    num_threads: int = Field(default=4, ge=1)
    dataset_format: DatasetFormat | None = None
    dataset_source: str | None = None
    timeout_seconds: float | None = Field(default=None, gt=0)
    notify_url: str | None = None
    secret_refs: SecretRefs | None = None

    @property
    def optimizer_name(self) -> str:
        """What the job does, where an optimization job's views name its optimizer."""
        return BATCH_JOB_KIND

    def lm_configs(self) -> dict[str, ModelConfig]:
        return {"main": self.main_model}

    def with_configs(self, configs: dict[str, ModelConfig]) -> BatchSpec:
        return self.model_copy(update={"main_model": configs.get("main", self.main_model)})

    @classmethod
    def role_field(cls, role: str) -> str:
        return JobSpec.role_field(role)

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def is_batch_job(job: Any) -> bool:
    """Whether a run's `job` parameter (JSON) is a batch prediction job's."""
    return isinstance(job, Mapping) and job.get("kind") == BATCH_JOB_KIND


def run_spec(parameters: Mapping[str, Any]) -> JobSpec | BatchSpec:
    """The spec in a job's flow-run parameters, whichever kind of job it is (ValidationError
    for a payload that is neither)."""
    job = parameters["job"]
    return BatchSpec.model_validate(job) if is_batch_job(job) else JobSpec.model_validate(job)


def missing_input_field(rows: Sequence[Mapping[str, Any]], input_fields: Sequence[str]) -> tuple[str, int] | None:
    """(the first input field a row lacks, that row's index), or None when every row has every field.
    A null value is missing too: a CSV/JSONL/Parquet source gives a row without a column as null."""
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            return (input_fields[0] if input_fields else "row", index)
        for name in input_fields:
            if row.get(name) is None:
                return name, index
    return None


def strip_lms(state: Mapping[str, Any]) -> dict[str, Any]:
    """A program's JSON state without any predictor's saved LM (the job's own LM is used)."""
    return {
        key: ({**value, "lm": None} if isinstance(value, Mapping) and "lm" in value else value)
        for key, value in state.items()
    }


def results_jsonl(results: Sequence[Mapping[str, Any]]) -> bytes:
    """One JSON line per input row, in row order: `{"row", "outputs"}` or `{"row", "error"}`."""
    ordered = sorted(results, key=lambda r: r.get("row", 0))
    return b"".join(orjson.dumps(dict(r)) + b"\n" for r in ordered)


def scrub_errors(results: list[dict[str, Any]], secrets: Sequence[str]) -> list[dict[str, Any]]:
    """The results with every secret string (api keys, header values) masked in row errors."""
    secrets = [s for s in secrets if s]
    if not secrets:
        return results
    scrubbed = []
    for result in results:
        error = result.get("error")
        if isinstance(error, str):
            for secret in secrets:
                error = error.replace(secret, "***")
            result = {**result, "error": error}
        scrubbed.append(result)
    return scrubbed


def batch_summary(results: Sequence[Mapping[str, Any]], usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """Counts of a finished batch: rows, succeeded, failed, and the LM usage."""
    failed = sum(1 for r in results if "error" in r)
    return {"rows": len(results), "succeeded": len(results) - failed, "failed": failed, "usage": usage}
