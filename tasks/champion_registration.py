"""The champion gate's registration step, for runs of a schedule with `register_as`.

The job never writes the registry: it hands its own program (the JSON state, prompts and
scores its result will hold; no pickle) to the trusted side, which decides which program,
alias and owner from the schedule on the Prefect server
(dspy_service/schedule_registration.py). A sandboxed job (`DSPY_SERVICE_SANDBOXED`)
reaches it through the job-scoped Prefect proxy's registration route; an unsandboxed
engine, which holds the worker's Prefect credentials anyway, calls the same function
directly.

How it fails: `RegistrationFailed(why)` for a refusal or a Prefect/storage failure (the
gate then does not promote the run, so the champion and the alias move together);
`register_champion` returns (None, why) when the schedule has no `register_as` any more.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
from prefect.utilities.asyncutils import run_coro_as_sync

from dspy_service.contract import CHAMPION_REGISTRATION_ROUTE, engine_is_sandboxed
from dspy_service.job_result import ProgramArtifact
from dspy_service.prefect_http import sync_prefect_client
from tasks.data import DataSplits
from tasks.evaluate import TestScores


class RegistrationFailed(Exception):
    """The promoted run could not be registered; the message says why."""


def program_record(
    artifact: ProgramArtifact, scores: TestScores, splits: DataSplits, metric_name: str
) -> dict[str, Any]:
    """What the trusted side builds the version document from: this job's own program
    (the keys of its result that a version document reads)."""
    return {
        "baseline_test_metric": scores.baseline,
        "optimized_test_metric": scores.optimized,
        "metric_improvement": scores.improvement,
        "split_counts": splits.counts,
        "metric_name": metric_name,
        "program_artifact": {
            "program_state": artifact.program_state,
            "optimized_prompts": [p.model_dump(mode="json") for p in artifact.optimized_prompts],
            "metadata": artifact.metadata,
        },
        "details": {"dataset_rows": splits.rows, "dataset_sha256": splits.content_sha256},
    }


def via_proxy(record: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    with sync_prefect_client() as client:
        try:
            response = client.request("POST", CHAMPION_REGISTRATION_ROUTE, json=record)  # type: ignore[arg-type]
        except httpx.HTTPStatusError as exc:
            try:
                detail = exc.response.json().get("detail")
            except ValueError:
                detail = exc.response.text[:500]
            raise RegistrationFailed(str(detail)) from None
    answer = json.loads(response.content)
    return answer.get("registered"), str(answer.get("reason"))


def directly(job_id: str, record: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    from prefect import get_client

    from dspy_service.program_store import ProgramStoreError
    from dspy_service.schedule_registration import RegistrationRefused, register_promoted_run

    async def register() -> tuple[dict[str, Any] | None, str]:
        async with get_client() as client:
            return await register_promoted_run(client, job_id, record)

    try:
        return run_coro_as_sync(register())
    except (RegistrationRefused, ProgramStoreError) as exc:
        raise RegistrationFailed(str(exc)) from None


def register_champion(job_id: str, record: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """({program, version, alias} | None, what was done or why not)."""
    try:
        return via_proxy(record) if engine_is_sandboxed(os.environ) else directly(job_id, record)
    except RegistrationFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - Prefect or the storage: reported in the decision
        raise RegistrationFailed(f"{type(exc).__name__}: {exc}") from None
