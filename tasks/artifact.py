"""Stage 6: the optimized program as a pickle, a pickle-free JSON state and readable prompts."""

from __future__ import annotations

import base64
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import dspy

from dspy_service.contract import Stage
from dspy_service.job_result import OptimizedPrompt, ProgramArtifact
from tasks import stage


def strip_language_models(program: dspy.Module) -> None:
    """Saved programs would otherwise carry each predictor's LM config, api keys included."""
    for _, predictor in program.named_predictors():
        predictor.lm = None


class _HidePickleWarning(logging.Filter):
    """DSPy warns about *loading* untrusted .pkl files whenever a program is saved; the
    service saves its own program, so the warning only adds noise to every job's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Loading untrusted .pkl files" not in record.getMessage()


def _fields(example: Any, names: list[str]) -> dict[str, Any]:
    data = example.toDict() if hasattr(example, "toDict") else dict(example)
    return {name: data[name] for name in names if name in data}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def describe_predictor(name: str, predictor: dspy.Predict) -> OptimizedPrompt:
    signature = predictor.signature
    inputs, outputs = list(signature.input_fields), list(signature.output_fields)
    demos = []
    for demo in predictor.demos:
        data = demo.toDict() if hasattr(demo, "toDict") else dict(demo)
        demo_outputs = {k: v for k, v in data.items() if k not in inputs and not k.startswith("augmented")}
        demos.append({"inputs": _jsonable(_fields(demo, inputs)), "outputs": _jsonable(demo_outputs)})
    placeholders = {field: f"{{{field}}}" for field in inputs}
    try:
        messages = dspy.ChatAdapter().format(signature, predictor.demos, placeholders)
        formatted = "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in messages)
    except Exception as exc:  # a prompt preview must never fail the job
        formatted = f"(could not format the prompt: {exc})"
    return OptimizedPrompt(
        predictor_name=name,
        signature_name=getattr(signature, "__name__", type(signature).__name__),
        instructions=signature.instructions,
        input_fields=inputs,
        output_fields=outputs,
        demos=demos,
        formatted_prompt=formatted,
    )


def assert_no_secrets(blobs: list[bytes], secrets: list[str]) -> None:
    for secret in secrets:
        if len(secret) >= 4 and any(secret.encode() in blob for blob in blobs):
            raise RuntimeError("refusing to publish an artifact that contains an api_key")


@stage(Stage.SERIALIZE)
def serialize_program_artifact(program: dspy.Module, secrets: list[str]) -> ProgramArtifact:
    return program_artifact(program, secrets)


def program_artifact(program: dspy.Module, secrets: list[str], state_only_on_error: bool = False) -> ProgramArtifact:
    """The artifact of `program`. With `state_only_on_error` (a failed job keeping what it
    compiled), a program whose pickle cannot be written still gets its JSON state:
    `program_pickle_base64` is then empty and `metadata.pickle_error` says why."""
    strip_language_models(program)
    try:
        pickle_bytes, metadata = saved_program(program)
    except Exception as exc:
        if not state_only_on_error:
            raise
        pickle_bytes, metadata = b"", {"pickle_error": f"{type(exc).__name__}: {exc}"[:500]}
    state = _jsonable(program.dump_state())
    assert_no_secrets([pickle_bytes, json.dumps(state).encode()], secrets)
    prompts = [describe_predictor(name, predictor) for name, predictor in program.named_predictors()]
    return ProgramArtifact(
        path=None,
        program_pickle_base64=base64.b64encode(pickle_bytes).decode(),
        metadata=metadata,
        optimized_prompt=prompts[0] if prompts else None,
        optimized_prompts=prompts,
        program_state=state,
    )


def saved_program(program: dspy.Module) -> tuple[bytes, dict[str, Any]]:
    """(the pickle `program.save(save_program=True)` writes, its metadata)."""
    with tempfile.TemporaryDirectory(prefix="dspy-artifact-") as tmp:
        directory = Path(tmp) / "program"
        save_logger = logging.getLogger("dspy.primitives.base_module")
        hide = _HidePickleWarning()
        save_logger.addFilter(hide)
        try:
            program.save(str(directory), save_program=True)
        finally:
            save_logger.removeFilter(hide)
        return (directory / "program.pkl").read_bytes(), json.loads((directory / "metadata.json").read_text())
