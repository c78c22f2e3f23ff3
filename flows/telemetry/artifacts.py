"""Prefect artifacts of a job: live progress, and on success its results and prompts.

Keys derive from the job id (`job-<first 12 hex>-progress|results|prompt`), so the
Prefect UI's Artifacts page groups each job's artifacts, and DELETE /jobs removes them
with the run (api/gateway.py deletes a run's artifacts).

How it fails: best effort; an artifact that cannot be written is logged as a warning and
never fails the job.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from dspy_service.contract import artifact_key
from dspy_service.job_result import JobResult

logger = logging.getLogger("dspy_service.artifacts")
PROMPT_MARKDOWN_LIMIT = 60_000  # characters; a long few-shot prompt is cut, not dropped
DEMOS_SHOWN = 3


def create_progress_artifact(job_id: str, description: str) -> uuid.UUID | None:
    """Create the job's progress artifact at 0 % (call from the flow's own thread: the
    artifact is attached to the run through its context)."""
    from prefect.artifacts import create_progress_artifact as create

    try:
        return create(progress=0.0, key=artifact_key(job_id, "progress"), description=description)
    except Exception as exc:  # noqa: BLE001  observability must not fail the job
        logger.warning("could not create the progress artifact: %s", exc)
        return None


def update_progress_artifact(client: Any, artifact_id: uuid.UUID, percent: float, description: str) -> None:
    from prefect.client.schemas.actions import ArtifactUpdate

    client.update_artifact(
        artifact_id=artifact_id,
        artifact=ArtifactUpdate(data=round(min(100.0, max(0.0, percent)), 1), description=description),
    )


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def results_table(result: JobResult) -> list[dict[str, str]]:
    """Rows of the results table: scores, splits, usage per role, cost, time."""
    rows: list[dict[str, str]] = []

    def add(measure: str, value: Any) -> None:
        rows.append({"measure": measure, "value": _fmt(value)})

    add("baseline_test_metric", result.baseline_test_metric)
    add("optimized_test_metric", result.optimized_test_metric)
    add("metric_improvement", result.metric_improvement)
    counts = result.split_counts
    add("split train / val / test", f"{counts.train} / {counts.val} / {counts.test}")
    usage = result.details.get("usage") or {}
    for role, numbers in sorted((usage.get("by_role") or {}).items()):
        add(
            f"LM calls ({role})",
            f"{numbers.get('calls', 0)} calls, {numbers.get('prompt_tokens', 0)} prompt + "
            f"{numbers.get('completion_tokens', 0)} completion tokens, {numbers.get('cache_hits', 0)} cache hits",
        )
    total = usage.get("total") or {}
    add("LM calls (total)", total.get("calls"))
    add("tokens (total)", total.get("total_tokens"))
    add("cache hits (total)", total.get("cache_hits"))
    add("failed LM calls / retries (total)", f"{total.get('errors', 0)} / {total.get('retries', 0)}")
    cost = total.get("cost")
    add("estimated cost (USD)", f"{_fmt(cost)}" + ("" if total.get("cost_known") else " (price unknown)"))
    add("compile_seconds", result.details.get("compile_seconds"))
    add("runtime_seconds", result.runtime_seconds)
    return rows


def prompt_markdown(result: JobResult) -> str:
    """The optimized program's prompt(s), readable in the Prefect UI."""
    artifact = result.program_artifact
    prompts = artifact.optimized_prompts or ([artifact.optimized_prompt] if artifact.optimized_prompt else [])
    lines = [f"# Optimized prompt: {result.module_name} + {result.optimizer_name}", ""]
    lines.append(
        f"Test metric: {_fmt(result.baseline_test_metric)} (baseline) → {_fmt(result.optimized_test_metric)} "
        f"(optimized) on {result.split_counts.test} examples."
    )
    for prompt in prompts:
        lines += [
            "",
            f"## `{prompt.predictor_name}` ({prompt.signature_name})",
            "",
            f"**Inputs:** {', '.join(prompt.input_fields)}  ",
            f"**Outputs:** {', '.join(prompt.output_fields)}  ",
            f"**Demos:** {len(prompt.demos)}",
            "",
            "### Instructions",
            "",
            *[f"> {line}" if line else ">" for line in (prompt.instructions or "").splitlines()],
        ]
        for index, demo in enumerate(prompt.demos[:DEMOS_SHOWN], start=1):
            lines += ["", f"**Demo {index}:** inputs `{demo.get('inputs')}` → outputs `{demo.get('outputs')}`"]
        if prompt.formatted_prompt:
            lines += ["", "### Formatted prompt", "", "```text", prompt.formatted_prompt.replace("```", "'''"), "```"]
    text = "\n".join(lines)
    if len(text) > PROMPT_MARKDOWN_LIMIT:
        text = text[:PROMPT_MARKDOWN_LIMIT] + "\n```\n\n(cut: the full prompt is in the job's result)"
    return text


def publish_result_artifacts(job_id: str | None, result: JobResult) -> None:
    """The results table and the prompt markdown (call from the flow's own thread)."""
    if not job_id:
        return
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    try:
        create_table_artifact(
            table=results_table(result),
            key=artifact_key(job_id, "results"),
            description=f"Baseline vs optimized ({result.module_name} + {result.optimizer_name}), usage and cost",
        )
        create_markdown_artifact(
            markdown=prompt_markdown(result),
            key=artifact_key(job_id, "prompt"),
            description="The optimized prompt(s)",
        )
    except Exception as exc:  # noqa: BLE001
        logger.warning("could not publish the result artifacts: %s", exc)
