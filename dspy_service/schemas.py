"""The wire models shared by the HTTP facade and the optimization flow.

One place defines the POST /run body (`JobRequest`) and the part of it that travels to the
flow as a Prefect parameter (`JobSpec`, everything but the inline rows); the `result` object
the flow returns is dspy_service/job_result.py's. Field names on the wire are exactly those of
`API_CONTRACT.md`; Python-side names differ only where pydantic reserves the wire name
(`model_config`).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from dspy_service.budget import Budget, BudgetSource
from dspy_service.contract import CREDENTIAL_NAME_PATTERN
from dspy_service.dataset_source import DatasetFormat, check_source

# Optimizer keyword arguments that name a language model. Users may give a model name or
# a ModelConfig object there; the service turns it into the matching *_model_config field
# and passes a real `dspy.LM` to the optimizer.
LM_ROLE_KWARGS = {
    "reflection_lm": "reflection_model",
    "prompt_model": "prompt_model",
    "task_model": "task_model",
}


# What a view of a model config shows (an allow-list: anything else, secrets included,
# stays out of every response). `extra` keys listed here are never taken for secrets.
PUBLIC_MODEL_FIELDS = ("base_url", "temperature", "max_tokens", "top_p", "model_type", "credential")
PUBLIC_EXTRA_KEYS = frozenset({
    "num_retries", "cache", "input_cost_per_token", "output_cost_per_token", "timeout",
    "reasoning_effort", "stop", "n", "seed", "max_completion_tokens", "max_tokens",
    "frequency_penalty", "presence_penalty", "top_k", "logprobs", "top_logprobs",
    "response_format", "rollout_id", "parallel_tool_calls", "model_type", "temperature", "top_p",
})


# `extra` keys that are fields of ModelConfig: given in `extra`, they move to the field.
EXTRA_KEYS_WITH_FIELDS = {"max_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p",
                          "api_base": "base_url", "base_url": "base_url"}
# `extra` keys the service itself passes to the LM or uses for metering: never the user's.
RESERVED_EXTRA_KEYS = {
    "model": "the model is `name`",
    "role": "the service names each model's role",
    "meter": "the service meters every call",
    "price": "give input_cost_per_token and output_cost_per_token instead",
    "messages": "messages are what the program sends",
    "prompt": "prompts are what the program sends",
}


class ModelConfig(BaseModel):
    """A LiteLLM-style model description; unknown keys (e.g. `model_type`) are kept.

    `credential` names a credential of the job's owner (POST /credentials); its api key and
    headers reach the LM at run time. Inline secrets (`extra.api_key`, `extra.headers`,
    secret-looking `extra` keys) are moved by the service into a Secret block owned by the
    job; where both give the same entry, the inline one wins (headers: per header name).
    """

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, description="LiteLLM model id, e.g. openai/gpt-4o-mini")
    base_url: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    credential: str | None = Field(
        default=None,
        pattern=CREDENTIAL_NAME_PATTERN,
        description="Name of one of your credentials (POST /credentials): its api key and headers are used.",
    )
    extra: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _settings_given_in_extra(cls, data: Any) -> Any:
        """A setting given in `extra` that has a field of its own (`extra.max_tokens`, ...)
        moves to that field when the field is unset or equal; a different value stays in
        `extra`, where the API's preflight rejects it with a 400 naming both
        (`model_settings_problem`). One precedence: the field is the setting's place."""
        if not isinstance(data, dict) or not isinstance(data.get("extra"), dict):
            return data
        data, extra = dict(data), dict(data["extra"])
        for key, field in EXTRA_KEYS_WITH_FIELDS.items():
            if key in extra and (data.get(field) is None or data[field] == extra[key]):
                data[field] = extra.pop(key)
        data["extra"] = extra
        return data

    def settings_problem(self, field_name: str) -> tuple[str, str] | None:
        """(the field at fault, why) for an `extra` entry the service cannot pass to the LM."""
        for key, field in EXTRA_KEYS_WITH_FIELDS.items():
            if key in self.extra:
                return (
                    f"{field_name}.extra.{key}",
                    f"{field_name}.extra.{key} ({self.extra[key]!r}) conflicts with {field_name}.{field} "
                    f"({getattr(self, field)!r}): give it once, as {field_name}.{field}",
                )
        reserved = sorted(RESERVED_EXTRA_KEYS & self.extra.keys())
        if reserved:
            key = f"{field_name}.extra.{reserved[0]}"
            return key, f"{key} is set by the service: {RESERVED_EXTRA_KEYS[reserved[0]]}"
        return None

    def public_settings(self) -> dict[str, Any]:
        """The settings a view may show: an allow-list of fields and of `extra` keys."""
        data = self.model_dump(exclude_none=True)
        shown = {key: data[key] for key in PUBLIC_MODEL_FIELDS if key in data}
        shown["extra"] = {k: v for k, v in self.extra.items() if k in PUBLIC_EXTRA_KEYS}
        return shown

    def public_view(self) -> dict[str, Any]:
        """The model config as every view shows it: its name and `public_settings`."""
        return {"name": self.name, **self.public_settings()}


class ColumnMapping(BaseModel):
    model_config = ConfigDict(extra="ignore")

    inputs: dict[str, str] = Field(min_length=1)
    outputs: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _columns_are_input_or_output(self) -> ColumnMapping:
        both = sorted(set(self.inputs.values()) & set(self.outputs.values()))
        if both:
            raise ValueError(f"column(s) {both} are mapped both as input and as output")
        return self

    @property
    def fields(self) -> dict[str, str]:
        """Signature field -> dataset column, inputs first."""
        return {**self.inputs, **self.outputs}


class SplitFractions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    train: float = Field(default=0.7, ge=0)
    val: float = Field(default=0.15, ge=0)
    test: float = Field(default=0.15, ge=0)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.val + self.test
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"train + val + test must equal 1.0, got {total:g}")
        if self.train <= 0:
            raise ValueError("train must be greater than 0")
        return self

    def counts(self, rows: int) -> dict[str, int]:
        """How many of `rows` examples go to each split (val and test rounded, train the rest)."""
        val = round(rows * self.val)
        test = round(rows * self.test)
        return {"train": rows - val - test, "val": val, "test": test}


# Role of a model in a job -> the JobSpec attribute holding its config.
MODEL_ROLES = {"main": "main_model", "reflection": "reflection_model", "prompt": "prompt_model", "task": "task_model"}


class SecretRefs(BaseModel):
    """Where a job's secrets are: Prefect Secret block names, set by the service only.

    `inline_block` holds the inline secrets of the job (or of its schedule) as
    {role: {extra key: value}}; `credential_blocks` names, per role, the block of the
    credential that role's `credential` refers to.
    """

    model_config = ConfigDict(extra="forbid")

    inline_block: str | None = None
    credential_blocks: dict[str, str] = Field(default_factory=dict)


class JobSpec(BaseModel):
    """Everything a job needs except inline dataset rows; the flow's main parameter."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, protected_namespaces=())

    username: str = Field(default="anonymous", min_length=1, max_length=200)
    name: str | None = Field(default=None, max_length=200, description="Your label for the job, shown in its views.")
    module_name: str = Field(min_length=1)
    module_kwargs: dict[str, Any] = Field(default_factory=dict)
    signature_code: str = Field(min_length=1)
    metric_code: str = Field(min_length=1)
    optimizer_name: str = Field(min_length=1)
    optimizer_kwargs: dict[str, Any] = Field(default_factory=dict)
    compile_kwargs: dict[str, Any] = Field(default_factory=dict)
    column_mapping: ColumnMapping
    split_fractions: SplitFractions = Field(default_factory=SplitFractions)
    shuffle: bool = True
    seed: int | None = None
    main_model: ModelConfig = Field(alias="model_config")
    reflection_model: ModelConfig | None = Field(default=None, alias="reflection_model_config")
    prompt_model: ModelConfig | None = Field(default=None, alias="prompt_model_config")
    task_model: ModelConfig | None = Field(default=None, alias="task_model_config")
    # Datasets by reference: read by the job itself at every run (tasks/data.py).
    dataset_format: DatasetFormat | None = Field(
        default=None, description="Format of dataset_source when its name does not tell."
    )
    dataset_source: str | None = Field(
        default=None,
        description="Absolute file path or http(s) URL of a CSV, JSONL, JSON or Parquet file, "
        "re-read at every run; instead of inline `dataset` rows.",
    )
    num_threads: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Parallel LM calls of the job: the optimizer's `num_threads` (where it takes one; "
        "`optimizer_kwargs.num_threads` wins) and the test evaluation's. Default: DSPY_SERVICE_NUM_THREADS.",
    )
    timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Wall-clock limit of this job; at most the service's DSPY_SERVICE_JOB_TIMEOUT_SECONDS "
        "(the default when unset). A job over its limit is stopped and fails with a timeout message.",
    )
    budget: Budget | None = Field(
        default=None,
        description="Hard limits on the job's LM usage (calls, tokens, USD). Once the next call would exceed "
        "one, the job stops optimizing and ends with its best candidate so far (see README, Budgets).",
    )
    evaluate_baseline: bool = Field(
        default=True,
        description="Score the unoptimized program on the test split too (`baseline_test_metric`). A sweep sets "
        "it false on every cell but the first of each model: that cell's baseline is theirs (README, Sweeps).",
    )
    budget_source: BudgetSource | None = Field(
        default=None,
        description="Set by the service: where `budget` came from, the job's body (`job`) or its owner's "
        "default budget (`user_default`, PUT /users/me/budget).",
    )
    notify_url: str | None = Field(
        default=None,
        max_length=2000,
        description="http(s) URL the service POSTs a signed JSON event to when the job ends (success, failure, "
        "cancel); default: your own default (PUT /users/me/notify); null: none.",
    )
    secret_refs: SecretRefs | None = Field(default=None, description="Set by the service; never by a client.")

    @field_validator("username", mode="before")
    @classmethod
    def _default_username(cls, value: Any) -> Any:
        return "anonymous" if value is None else value

    @model_validator(mode="before")
    @classmethod
    def _lm_kwargs_to_model_configs(cls, data: Any) -> Any:
        """`optimizer_kwargs.reflection_lm: "openai/x"` means `reflection_model_config`."""
        if not isinstance(data, dict) or not isinstance(data.get("optimizer_kwargs"), dict):
            return data
        kwargs = dict(data["optimizer_kwargs"])
        data = dict(data)
        for kwarg, field in LM_ROLE_KWARGS.items():
            if kwarg not in kwargs:
                continue
            value = kwargs.pop(kwarg)
            alias = cls.model_fields[field].alias
            if data.get(alias) is not None or data.get(field) is not None:
                raise ValueError(
                    f"optimizer_kwargs.{kwarg} and {alias} both set: give the model once"
                )
            data[alias] = {"name": value} if isinstance(value, str) else value
        data["optimizer_kwargs"] = kwargs
        return data

    @field_validator("dataset_source")
    @classmethod
    def _dataset_source_is_readable(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A cheap check of the string only: the file is read by the job, never by the API."""
        if value is None:
            return None
        value = value.strip()
        check_source(value, info.data.get("dataset_format"))
        return value

    def lm_configs(self) -> dict[str, ModelConfig]:
        """Role -> config for every model the job uses (`main` always present)."""
        configs = {role: getattr(self, attribute) for role, attribute in MODEL_ROLES.items()}
        return {role: config for role, config in configs.items() if config is not None}

    def with_configs(self, configs: dict[str, ModelConfig]) -> JobSpec:
        """A copy with the model configs of the given roles replaced."""
        return self.model_copy(update={MODEL_ROLES[role]: config for role, config in configs.items()})

    @classmethod
    def role_field(cls, role: str) -> str:
        """The wire name of a role's model config (`model_config`, `reflection_model_config`, ...)."""
        return cls.model_fields[MODEL_ROLES[role]].alias or MODEL_ROLES[role]

    def wire(self) -> dict[str, Any]:
        """JSON-ready dict with the contract's field names."""
        return self.model_dump(mode="json", by_alias=True)


class DatasetRef(BaseModel):
    """Where a job's rows are stored (see dspy_service.storage); a flow parameter."""

    url: str
    rows: int
    sha256: str | None = None


# JobSpec fields only the service sets (a request setting one is a 422); what to give instead.
SERVICE_SET_FIELDS = {
    "secret_refs": "give `credential` in a model config instead",
    "budget_source": "give `budget` (or set a default budget: PUT /users/me/budget)",
}


class JobRequest(JobSpec):
    """The POST /run body: a JobSpec plus the inline dataset rows (or a `dataset_source`)."""

    dataset: list[dict[str, Any]] | None = Field(default=None, min_length=1, validate_default=True)
    # Top-level keys of the body that are no field (ignored, as the contract says; the
    # submission's answer lists them so that a typo shows).
    _ignored_fields: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _note_ignored_fields(cls, data: Any, handler: Any) -> Any:
        request = handler(data)
        if isinstance(data, dict):
            known = {name for name in cls.model_fields} | {f.alias for f in cls.model_fields.values() if f.alias}
            request._ignored_fields = sorted(str(key) for key in data if key not in known)
        return request

    @property
    def ignored_fields(self) -> list[str]:
        return list(self._ignored_fields)

    @field_validator(*SERVICE_SET_FIELDS, mode="before")
    @classmethod
    def _set_by_the_service(cls, value: Any, info: ValidationInfo) -> Any:
        """A client naming blocks could point its job at another tenant's secrets; the
        budget's source is the service's record of where it came from."""
        if value is not None:
            raise ValueError(f"{info.field_name} is set by the service; {SERVICE_SET_FIELDS[info.field_name]}")
        return value

    @field_validator("dataset")
    @classmethod
    def _one_dataset(cls, value: list[dict[str, Any]] | None, info: ValidationInfo) -> list[dict[str, Any]] | None:
        if "dataset_source" not in info.data:
            return value  # dataset_source itself was invalid; that error says why
        if (value is None) == (info.data["dataset_source"] is None):
            raise ValueError("give exactly one of `dataset` (inline rows) and `dataset_source` (a file path or URL)")
        return value

    def spec(self) -> JobSpec:
        return JobSpec.model_validate(self.model_dump(exclude={"dataset"}))
