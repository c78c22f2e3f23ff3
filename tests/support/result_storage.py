"""Job results read from a plain directory, as from PREFECT_LOCAL_STORAGE_PATH on a stack,
and where a stack's finished job keeps its result file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.filesystems import LocalFileSystem

from dspy_service import result_files


def use_local_result_storage(monkeypatch, directory: Path) -> Path:
    """Make the shared result reader find every result under `directory`."""

    async def local_storage(block_id):
        return LocalFileSystem(basepath=str(directory))

    monkeypatch.setattr(result_files, "result_storage", local_storage)
    return directory


def stored_result_path(stack: Any, job_id: str) -> Path:
    """A finished job's result file on a `RunningStack`: `<results>/<job id>/<name>` (a
    sandboxed engine's own directory), else the key under `<results>`."""
    key = Path(stack.flow_run(job_id)["state"]["data"]["storage_key"])
    results = Path(stack.env["PREFECT_LOCAL_STORAGE_PATH"])
    inside = key.relative_to(results) if key.is_relative_to(results) else key
    candidates = [results / job_id / inside, results / key]
    existing = [path for path in candidates if path.is_file()]
    assert existing, f"no result file of {job_id} among {candidates}"
    return existing[0]
