"""Job results read from a plain directory, as from PREFECT_LOCAL_STORAGE_PATH on a stack."""

from __future__ import annotations

from pathlib import Path

from prefect.filesystems import LocalFileSystem

from dspy_service import result_files


def use_local_result_storage(monkeypatch, directory: Path) -> Path:
    """Make the shared result reader find every result under `directory`."""

    async def local_storage(block_id):
        return LocalFileSystem(basepath=str(directory))

    monkeypatch.setattr(result_files, "result_storage", local_storage)
    return directory
