"""A registered program version's document: what rebuilds, describes and serves it.

Built from a successful job's spec (its Prefect parameters) and its stored result (read
as JSON only, dspy_service/result_files.py). Pure: no Prefect, no I/O, so the API, the
program server and the client's loader share it. Keys:

- `signature_code`, `module_name`, `module_kwargs`, `program_state` (DSPy's JSON state),
  `optimized_prompts`: rebuild the program with `dspy_service.client.program.build_program`;
- `input_fields`, `output_fields`, `instructions`, `demo_count`: GET /programs/{name}/info;
- `metrics`, `dataset` (rows, sha256), `metric_name`, `metric_code_sha256`, `optimizer_name`;
- `model_config`: the job's main model config as views show it (an allow-list; a
  `credential` is a name only, never a key);
- `versions`: of dspy and of this service that produced the program.

The store (dspy_service/program_store.py) adds `name`, `version`, `owner`, `job_id`,
`created_at`. How it fails: `ValueError` naming what the result lacks (no program state).
"""

from __future__ import annotations

import hashlib
from importlib import metadata
from typing import Any

from dspy_service.schemas import JobSpec

DOCUMENT_FORMAT = 1


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def prompt_fields(prompts: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(input fields, output fields) of a program: its first predictor's inputs, its last
    predictor's outputs (one predictor for Predict and ChainOfThought)."""
    if not prompts:
        return [], []
    return list(prompts[0].get("input_fields") or []), list(prompts[-1].get("output_fields") or [])


def build_document(spec: JobSpec, result: dict[str, Any]) -> dict[str, Any]:
    """The document of a version registered from the job `spec` whose stored result is `result`."""
    artifact = result.get("program_artifact") if isinstance(result.get("program_artifact"), dict) else {}
    state = artifact.get("program_state")
    if not isinstance(state, dict) or not state:
        raise ValueError("the job's result holds no program state (a job from before JSON states were saved?)")
    prompts = [p for p in artifact.get("optimized_prompts") or [] if isinstance(p, dict)]
    inputs, outputs = prompt_fields(prompts)
    details = result.get("details") if isinstance(result.get("details"), dict) else {}
    saved_with = (artifact.get("metadata") or {}).get("dependency_versions") or {}
    return {
        "format": DOCUMENT_FORMAT,
        "signature_code": spec.signature_code,
        "module_name": spec.module_name,
        "module_kwargs": spec.module_kwargs,
        "program_state": state,
        "optimized_prompts": prompts,
        "input_fields": inputs,
        "output_fields": outputs,
        "instructions": [p.get("instructions", "") for p in prompts],
        "demo_count": sum(len(p.get("demos") or []) for p in prompts),
        "metrics": {
            "baseline_test_metric": result.get("baseline_test_metric"),
            "optimized_test_metric": result.get("optimized_test_metric"),
            "metric_improvement": result.get("metric_improvement"),
            "split_counts": result.get("split_counts"),
        },
        "metric_name": result.get("metric_name"),
        "metric_code_sha256": hashlib.sha256(spec.metric_code.encode()).hexdigest(),
        "optimizer_name": spec.optimizer_name,
        "dataset": {"rows": details.get("dataset_rows"), "sha256": details.get("dataset_sha256")},
        "model_config": spec.main_model.public_view(),
        "versions": {
            "dspy": saved_with.get("dspy") or package_version("dspy"),
            "python": saved_with.get("python"),
            "dspy_service": details.get("service_version") or package_version("dspy-service"),
        },
    }


def program_info(document: dict[str, Any]) -> dict[str, Any]:
    """GET /programs/{name}/info: fields, instructions and demos, with no LM call."""
    return {
        "name": document.get("name"),
        "version": document.get("version"),
        "module_name": document.get("module_name"),
        "input_fields": document.get("input_fields", []),
        "output_fields": document.get("output_fields", []),
        "instructions": document.get("instructions", []),
        "demo_count": document.get("demo_count", 0),
        "predictors": [
            {
                "name": p.get("predictor_name"),
                "instructions": p.get("instructions", ""),
                "input_fields": p.get("input_fields", []),
                "output_fields": p.get("output_fields", []),
                "demo_count": len(p.get("demos") or []),
            }
            for p in document.get("optimized_prompts", [])
        ],
        "model": (document.get("model_config") or {}).get("name"),
    }
