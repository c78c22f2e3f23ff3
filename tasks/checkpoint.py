"""What a job keeps once it has compiled its program, written before evaluation starts.

A job that is cancelled, runs out of time or is killed (SIGKILL, out of memory) after
compile never reaches the failure path that keeps its program (flows/optimize.py
`ProgramKept`): its supervisor ends it (deployments/runtime/). So right after compile the
flow writes what that path would keep, the same JSON (a `JobResult`: the program's artifact,
its JSON state at least, and the metrics that exist then), into the job's result storage
under `contract.kept_program_key(<flow run id>)`. A sandboxed engine's result storage is its
own result directory (`<results>/<run id>/`, deployments/runtime/job_sandbox.py), which the
API reads like the job's result: as JSON only, for a job that ended cancelled or failed
without a stored result (api/kept_programs.py); deleting the job deletes it. Secrets are
refused as in every artifact (tasks/artifact.py `assert_no_secrets`).

On a file system (local, or a mount every host shares) the write is atomic: a temporary
file, fsync, rename; a kill in the middle leaves the previous version or none, never half a
file. When the job is told to stop, `refresh_kept_program` rewrites it with the usage
counted since compile (the supervisor kills the engine after its grace period either way).

How it fails: never by failing the job. A program that cannot be saved, or a storage that
refuses the write, is logged in the job's log and the job goes on; it then keeps nothing if
it is cancelled (a failure still keeps its program through ProgramKept).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dspy
from prefect.filesystems import LocalFileSystem
from prefect.results import get_default_result_storage

from dspy_service.contract import kept_program_key
from dspy_service.job_result import ProgramArtifact
from tasks.artifact import program_artifact

logger = logging.getLogger("tasks.checkpoint")

# (the artifact, details to add) -> the JSON object kept: flows/optimize.py builds it, as
# for a failed job, so that both read back the same way.
ResultBuilder = Callable[[ProgramArtifact, dict[str, Any]], dict[str, Any]]


@dataclass
class KeptProgram:
    """One job's kept program: its artifact (computed once) and how to build the JSON kept."""

    flow_run_id: str
    artifact: ProgramArtifact
    result_of: ResultBuilder

    def write(self, details: dict[str, Any] | None = None) -> int:
        """Write it to the job's result storage; the bytes written."""
        data = json.dumps(self.result_of(self.artifact, details or {})).encode()
        write_kept_bytes(kept_program_key(self.flow_run_id), data)
        return len(data)


_kept: KeptProgram | None = None


@contextlib.contextmanager
def language_models_restored(program: dspy.Module) -> Iterator[None]:
    """Saving strips each predictor's LM (tasks/artifact.py); evaluation still needs them."""
    saved = [(predictor, predictor.lm) for _, predictor in program.named_predictors()]
    try:
        yield
    finally:
        for predictor, lm in saved:
            predictor.lm = lm


def keep_compiled_program(
    flow_run_id: Any, program: dspy.Module, secrets: list[str], result_of: ResultBuilder
) -> KeptProgram | None:
    """Write what the job keeps if it ends after this point without a result of its own;
    None (logged) when it could not be written."""
    global _kept
    if flow_run_id is None:  # not inside a flow run: nothing to key it by
        return None
    started = time.perf_counter()
    try:
        with language_models_restored(program):
            artifact = program_artifact(program, secrets, state_only_on_error=True)
        kept = KeptProgram(str(flow_run_id), artifact, result_of)
        size = kept.write()
    except Exception as exc:  # noqa: BLE001 - a checkpoint must never fail the job
        logger.warning(
            "the compiled program could not be kept before evaluation (%s: %s); a cancel or crash "
            "from here on would lose it",
            type(exc).__name__,
            str(exc)[:300],
        )
        return None
    _kept = kept
    logger.info(
        "compiled program kept in the job's result storage, in case the job is cancelled or crashes "
        "(%.1f KB in %.0f ms)",
        size / 1024,
        (time.perf_counter() - started) * 1000,
    )
    return kept


def refresh_kept_program(flow_run_id: Any) -> bool:
    """Rewrite this run's kept program with the usage counted since compile (the job is
    being stopped); False when it kept none or the write failed (the older one stays)."""
    kept = _kept
    if kept is None or flow_run_id is None or kept.flow_run_id != str(flow_run_id):
        return False
    try:
        kept.write()
    except Exception as exc:  # noqa: BLE001 - the version written before evaluation stays
        logger.warning("the kept program could not be updated (%s: %s)", type(exc).__name__, str(exc)[:300])
        return False
    return True


def reset() -> None:
    """For tests that run several flows in one process."""
    global _kept
    _kept = None


def write_kept_bytes(key: str, data: bytes) -> None:
    """`data` at `key` in the job's default result storage (the API reads the same storage)."""
    storage = get_default_result_storage(_sync=True)
    if not isinstance(storage, LocalFileSystem):
        storage.write_path(key, data)
        return
    path = storage._resolve_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a host crash
    finally:
        os.close(directory)
