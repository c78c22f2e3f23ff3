"""The contract's `result` object: what the optimization flow returns and GET /jobs/{id} shows.

Field names on the wire are exactly those of `API_CONTRACT.md`. Pure models: validation
errors are pydantic's.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class OptimizedPrompt(BaseModel):
    predictor_name: str
    signature_name: str
    instructions: str
    input_fields: list[str]
    output_fields: list[str]
    demos: list[dict[str, Any]] = Field(default_factory=list)
    formatted_prompt: str = ""


class ProgramArtifact(BaseModel):
    path: str | None = None
    program_pickle_base64: str
    metadata: dict[str, Any]
    optimized_prompt: OptimizedPrompt | None = None
    optimized_prompts: list[OptimizedPrompt] = Field(default_factory=list)
    program_state: dict[str, Any] = Field(
        default_factory=dict,
        description="Pickle-free form: the JSON state of `program.save(path.json)`; load it "
        "into a module rebuilt from signature_code with `program.load_state(...)`.",
    )


class SplitCounts(BaseModel):
    train: int
    val: int
    test: int


class JobResult(BaseModel):
    """The contract's `result` object; also the flow's return value."""

    module_name: str
    optimizer_name: str
    metric_name: str
    split_counts: SplitCounts
    baseline_test_metric: float | None
    optimized_test_metric: float | None
    metric_improvement: float | None
    optimization_metadata: dict[str, Any] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)
    program_artifact_path: str | None = None
    program_artifact: ProgramArtifact
    runtime_seconds: float
    run_log: list[dict[str, Any]] = Field(default_factory=list)
