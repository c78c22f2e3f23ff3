"""Every check a job can pass or fail before any of its code runs.

The API runs this on POST /run (and on schedules) to answer 400 at once; nothing here
executes user code: it parses, walks the AST, resolves names in the registry and reads
real constructor signatures with `inspect`. The URLs a job will connect to (model
`base_url`s, an http(s) `dataset_source`) are checked against the egress policy
(dspy_service/egress_policy.py), and so is a `notify_url` (dspy_service/webhooks.py),
resolving names (a few seconds at most; a name that
does not resolve passes, and the job's egress proxy decides when it connects).
"""

from __future__ import annotations

from typing import Any

from dspy_service.budget import check_room
from dspy_service.code_checks import (
    check_code_size,
    check_columns_present,
    check_fields_against_mapping,
    find_metric_name,
    outline_signature,
)
from dspy_service.dataset_source import file_source_problem, is_remote, source_path
from dspy_service.errors import JobError
from dspy_service.estimate import BASELINE, estimate_job
from dspy_service.registry import fit_to_splits, get_registry
from dspy_service.schemas import JobSpec
from dspy_service.settings import get_settings
from dspy_service.webhooks import notify_url_problem

ESTIMATE_MARGIN = 0.5  # of the estimate's low figure; see check_budget_fits_baseline


def check_budget_fits_baseline(spec: JobSpec, rows: list[dict[str, Any]]) -> None:
    """A token or dollar budget under half the least the baseline evaluation uses (the
    estimate's low figure, dspy_service/estimate.py) is a 400 naming it: such a job could
    only fail. Half, because the estimate counts characters / 4 per token and a tokenizer
    may count fewer: a budget the job might fit is left to the job. Calls are checked
    exactly by `check_room`; a job the estimate cannot answer for passes here."""
    budget = spec.budget
    if budget is None or (budget.max_tokens is None and budget.max_cost_usd is None):
        return
    try:
        baseline = estimate_job(spec, rows).stages[BASELINE]
    except JobError:
        return
    tokens = baseline.prompt_tokens.low + baseline.completion_tokens.low
    if budget.max_tokens is not None and budget.max_tokens < tokens * ESTIMATE_MARGIN:
        raise JobError(
            f"budget.max_tokens {budget.max_tokens} is less than half of what the baseline evaluation alone uses: "
            f"at least ~{tokens:.0f} tokens (POST /run/estimate shows the figures)", field="budget.max_tokens",
        )
    cost = baseline.cost_usd.low if baseline.cost_usd is not None else None
    if budget.max_cost_usd is not None and cost is not None and budget.max_cost_usd < cost * ESTIMATE_MARGIN:
        raise JobError(
            f"budget.max_cost_usd {budget.max_cost_usd:g} is less than half of what the baseline evaluation alone "
            f"costs: at least ~${cost:.4g} (POST /run/estimate shows the figures)", field="budget.max_cost_usd",
        )


def check_timeout(spec: JobSpec) -> None:
    limit = get_settings().job_timeout_seconds
    if spec.timeout_seconds is not None and spec.timeout_seconds > limit:
        raise JobError(
            f"timeout_seconds is {spec.timeout_seconds:g}; this service allows at most {limit:g} "
            "(DSPY_SERVICE_JOB_TIMEOUT_SECONDS)",
            field="timeout_seconds",
        )


def check_egress(spec: JobSpec) -> None:
    """A model base_url or a dataset_source URL the egress policy denies: JobError naming the field."""
    urls = {f"{spec.role_field(role)}.base_url": c.base_url for role, c in spec.lm_configs().items() if c.base_url}
    if spec.dataset_source and is_remote(spec.dataset_source):
        urls["dataset_source"] = spec.dataset_source
    policy = get_settings().egress_policy
    for field, url in urls.items():
        problem = policy.url_problem(url)
        if problem:
            raise JobError(f"{field} is not allowed: {problem}", field=field)


def check_model_settings(spec: JobSpec) -> None:
    """An `extra` entry of a model config that collides with a setting of its own or with
    what the service passes to the LM: JobError naming it (never a TypeError in the job)."""
    for role, config in spec.lm_configs().items():
        problem = config.settings_problem(spec.role_field(role))
        if problem:
            raise JobError(problem[1], field=problem[0])


def check_notify_url(url: str | None) -> None:
    """A notify_url the service may not POST to (not http(s) with a host, or an address the
    egress policy denies): JobError naming the field."""
    if url is None:
        return
    problem = notify_url_problem(url, get_settings().egress_policy)
    if problem:
        raise JobError(f"notify_url is not allowed: {problem}", field="notify_url")


def check_file_source(spec: JobSpec) -> None:
    """A `dataset_source` file path outside DSPY_SERVICE_DATASET_DIRS, or inside the service
    home: JobError naming the field (a job's sandbox would not mount it)."""
    if not spec.dataset_source or is_remote(spec.dataset_source):
        return
    settings = get_settings()
    problem = file_source_problem(source_path(spec.dataset_source), settings.dataset_dirs, [str(settings.home_dir)])
    if problem:
        raise JobError(f"dataset_source is not allowed: {problem}", field="dataset_source")


def preflight(spec: JobSpec, rows: list[dict[str, Any]] | None) -> None:
    """Raise JobError naming the field at fault. `rows` is None when not known yet."""
    check_timeout(spec)
    max_kb = get_settings().max_code_kb
    check_code_size(spec.signature_code, "signature_code", max_kb)
    check_code_size(spec.metric_code, "metric_code", max_kb)
    outline = outline_signature(spec.signature_code)
    find_metric_name(spec.metric_code)
    check_fields_against_mapping(outline, spec.column_mapping.inputs, spec.column_mapping.outputs)

    registry = get_registry()
    module = registry.module(spec.module_name)
    registry.check_module_kwargs(module, spec.module_kwargs)
    optimizer = registry.optimizer(spec.optimizer_name)
    optimizer_kwargs = registry.optimizer_defaults(optimizer, spec.optimizer_kwargs)
    registry.check_optimizer_kwargs(
        optimizer, optimizer_kwargs, spec.compile_kwargs, lm_roles=set(spec.lm_configs()) - {"main"}
    )
    check_model_settings(spec)
    check_egress(spec)
    check_notify_url(spec.notify_url)
    check_file_source(spec)
    if rows is None:
        return
    limit = get_settings().max_dataset_rows
    if len(rows) > limit:
        raise JobError(
            f"dataset has {len(rows)} rows; the limit is {limit} (DSPY_SERVICE_MAX_DATASET_ROWS)", field="dataset"
        )
    check_columns_present(rows, spec.column_mapping.fields)
    fit_to_splits(optimizer, spec.split_fractions.counts(len(rows)), optimizer_kwargs, spec.compile_kwargs)
    check_budget(spec, rows)


def check_budget(spec: JobSpec, rows: list[dict[str, Any]] | None) -> None:
    """The budget's submit-time checks (calls for the test evaluation, tokens and dollars
    for the baseline); with rows unknown (a `dataset_source`) the job checks it itself."""
    if rows is None:
        return
    check_room(spec.budget, spec.split_fractions.counts(len(rows))["test"])
    check_budget_fits_baseline(spec, rows)
