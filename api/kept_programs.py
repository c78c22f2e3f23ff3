"""The compiled program a job kept before evaluation (tasks/checkpoint.py), read as JSON only.

The job writes it into its result storage as `contract.kept_program_key(<run id>)`: a
sandboxed job in its own result directory (`<run id>/<name>`), an unsandboxed one at
`<name>` (dspy_service/result_files.py `read_result_bytes` tries both, in that order). The
name is derived from the run id here, never read from anything the job wrote, so a job
can point the API at no other file. The content is parsed with `json` and nothing else,
and used only if it holds a program state (a job may write anything into its own files).

Failures: `read_kept_program` answers None for a job that kept nothing (it ended before
compile, or its write failed) and for content it refuses, logging why; a storage error
is logged too, never raised: the caller then has no artifact to show (404).
`delete_kept_program` logs what it could not delete and never raises.
"""

from __future__ import annotations

import logging
from typing import Any

from dspy_service import result_files
from dspy_service.contract import kept_program_key

logger = logging.getLogger("dspy_service.api")


async def read_kept_program(run_id: str) -> dict[str, Any] | None:
    """The JSON object job `run_id` kept once compiled; None when there is none to show."""
    try:
        storage = await result_files.result_storage(None)
        raw = await result_files.read_result_bytes(storage, run_id, kept_program_key(run_id))
    except (FileNotFoundError, ValueError):  # LocalFileSystem says ValueError for a missing file
        return None
    except Exception as exc:  # noqa: BLE001 - storage unreachable from this host, ...
        logger.warning("kept program of %s unreadable: %s", run_id, exc)
        return None
    try:
        value = result_files.decode_result_file(raw)
    except result_files.UnreadableResult as exc:
        logger.warning("kept program of %s refused: %s", run_id, exc)
        return None
    artifact = value.get("program_artifact") if isinstance(value, dict) else None
    if not isinstance(artifact, dict) or not isinstance(artifact.get("program_state"), dict):
        logger.warning("kept program of %s refused: it holds no program state", run_id)
        return None
    return value


async def delete_kept_program(run_id: str) -> None:
    """Delete what job `run_id` kept (both places it may lie), and its own result directory
    once empty."""
    try:
        storage = await result_files.result_storage(None)
        name = kept_program_key(run_id)
        result_files.delete_stored(storage, run_id, (f"{run_id}/{name}", name))
    except Exception as exc:  # noqa: BLE001 - the job is deleted regardless; say what was left
        logger.warning("could not delete the kept program of %s: %s", run_id, exc)
