"""Jobs' stored results, read as JSON and as nothing else.

Prefect's `State.result()` loads a result with whatever serializer its file names, pickle
included, so a result file rewritten as a pickle would run code in whoever reads it. The
API (job results, a schedule's champion) and the champion gate of a job (the previous
champion's program) therefore read results here, and only here: the run's state names
the result (storage key, storage block, serializer), and that serializer must be `json`;
the raw bytes are read from that storage (the default result storage of the reading
process, or the block's file system) and parsed with `json`. Flows store the value alone;
a file that holds a whole result record (the shape Prefect would load with the
serializer the record names) is read only if that serializer is `json` too, and its value
is again parsed with `json`. No object hooks, no imports: nothing here unpickles,
decompresses or imports what a state or a file names. Only a file directly in the result
storage's base directory is read (`key_name`): any other path in a key (`..`, another run's
directory, outside the storage) is refused, since a job may set its own state to anything.
A sandboxed job's result lies in a directory of its own, `<run id>/<name>`, tried first; an
unsandboxed job's at `<name>`. A run is given as the Prefect API's JSON (a `FlowRun` model:
`flow_run.model_dump(mode="json")`).

Failures: `UnreadableResult(why)` for a result that is refused (another serializer, not
JSON, not a JSON object, no result record in the state) or cannot be read (file gone,
storage unreachable). Callers decide what that means: the API's job gateway makes such a
job read as failed ("unreadable result: <why>"); the champion gate lets the run replace
a champion whose result is unreadable.
`delete_result_file` logs what it could not delete and never raises.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
from pathlib import Path, PurePosixPath
from typing import Any
from uuid import UUID

from prefect.filesystems import LocalFileSystem, WritableFileSystem
from prefect.results import aget_default_result_storage, aresolve_result_storage
from pydantic import BaseModel, ValidationError

logger = logging.getLogger("dspy_service.result_files")

JSON_SERIALIZER = "json"
LEGACY_RECORD_KEYS = {"serializer", "data", "prefect_version", "expiration"}


class UnreadableResult(Exception):
    """A job's stored result that is refused or cannot be read; the message says why."""


class RecordLocation(BaseModel):
    """Where a run's state says its result record lives (Prefect's ResultRecordMetadata,
    read without building the serializer it names)."""

    storage_key: str
    storage_block_id: UUID | None = None
    serializer_type: str | None = None


def record_location(run: dict[str, Any]) -> RecordLocation | None:
    """The result record a run's state names; None when the state holds no result."""
    data = (run.get("state") or {}).get("data")
    if data is None:
        return None
    if not isinstance(data, dict) or not data.get("storage_key"):
        raise UnreadableResult("the run's state holds no result record")
    serializer = data.get("serializer")
    try:
        return RecordLocation(
            storage_key=data["storage_key"],
            storage_block_id=data.get("storage_block_id"),
            serializer_type=serializer.get("type") if isinstance(serializer, dict) else None,
        )
    except ValidationError:
        raise UnreadableResult("the run's state names no valid result record") from None


async def result_storage(block_id: UUID | None) -> WritableFileSystem:
    """The storage holding results stored under `block_id` (None: the default storage)."""
    if block_id is None:
        return await aget_default_result_storage()
    return await aresolve_result_storage(block_id)


async def read_bytes(storage: WritableFileSystem, key: str) -> bytes:
    reader = getattr(storage, "aread_path", None) or storage.read_path
    content = reader(key)
    return await content if inspect.isawaitable(content) else content


def refuse_serializer(kind: Any) -> None:
    if kind != JSON_SERIALIZER:
        raise UnreadableResult(f"the result was written with the {kind!r} serializer; only 'json' is read")


def record_parts(content: Any) -> tuple[Any, Any] | None:
    """(serializer, serialized value) when `content` has the shape Prefect reads as a result
    record (its current shape, or the legacy `data`/`serializer` blob); None otherwise."""
    if not isinstance(content, dict):
        return None
    if {"metadata", "result"} <= content.keys():
        metadata = content["metadata"]
        return (metadata.get("serializer") if isinstance(metadata, dict) else None), content["result"]
    if {"data", "serializer"} <= content.keys() <= LEGACY_RECORD_KEYS:
        return content["serializer"], content["data"]
    return None


def decode_result_file(raw: bytes) -> Any:
    """The value a result file holds. Flows store the value alone, serialized with the
    serializer their state names (checked by the caller); a file holding a whole result
    record is read by Prefect with the serializer the record names, which must be JSON too."""
    try:
        content = json.loads(raw)
    except (ValueError, RecursionError):
        raise UnreadableResult("the result file is not JSON") from None
    parts = record_parts(content)
    if parts is None:
        return content
    serializer, value = parts
    refuse_serializer(serializer.get("type") if isinstance(serializer, dict) else None)
    if not isinstance(value, str):
        raise UnreadableResult("the result record holds no JSON text")
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        raise UnreadableResult("the result record's value is not JSON") from None


def key_name(storage: WritableFileSystem, key: str) -> str:
    """The file name a result key names directly in the storage's base directory (Prefect
    records `<base>/<name>` for local storage, `<name>` elsewhere). Any other path (`..`,
    another run's directory, a path outside the storage) is refused: a job may set its own
    state to anything, and must not point the reader at another job's file."""
    path = PurePosixPath(key)
    if path.is_absolute():
        base = getattr(storage, "basepath", None)
        if not base or Path(key).parent.resolve() != Path(str(base)).expanduser().resolve():
            raise UnreadableResult("the run's state names a result outside the result storage")
    elif len(path.parts) != 1:
        raise UnreadableResult("the run's state names a result outside its own result location")
    if path.name in ("", ".", ".."):
        raise UnreadableResult("the run's state names no result file")
    return path.name


async def read_result_bytes(storage: WritableFileSystem, run_id: str, key: str) -> bytes:
    """A sandboxed job writes its result into a directory of its own (`<run id>/<key>`,
    deployments/runtime/job_sandbox.py); results of unsandboxed jobs lie at `<key>`."""
    try:
        return await read_bytes(storage, f"{run_id}/{key}")
    except (FileNotFoundError, ValueError):  # LocalFileSystem says ValueError for a missing file
        return await read_bytes(storage, key)


def result_paths(run_id: str, key: str) -> list[str]:
    return [f"{run_id}/{key}", key]


async def read_json_result(run: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON object a run's state names as its result; None when it names none."""
    location = record_location(run)
    if location is None:
        return None
    refuse_serializer(location.serializer_type)  # none named: Prefect's default, pickle
    try:
        storage = await result_storage(location.storage_block_id)
    except Exception as exc:  # noqa: BLE001 - e.g. a storage block that is gone
        raise UnreadableResult(f"the result storage cannot be loaded ({type(exc).__name__})") from None
    key = key_name(storage, location.storage_key)
    try:
        raw = await read_result_bytes(storage, str(run.get("id")), key)
    except Exception as exc:  # noqa: BLE001 - file gone, storage unreachable from this host, ...
        logger.warning("result of %s unreadable: %s", run.get("id"), exc)
        raise UnreadableResult(f"the result file cannot be read ({type(exc).__name__})") from None
    value = decode_result_file(raw)
    if not isinstance(value, dict):
        raise UnreadableResult("the result is not a JSON object")
    return value


async def delete_result_file(run: dict[str, Any]) -> None:
    """Delete a run's stored result, if it has one."""
    try:
        location = record_location(run)
        if location is None:
            return
        storage = await result_storage(location.storage_block_id)
        delete_stored(storage, str(run["id"]), result_paths(str(run["id"]), key_name(storage, location.storage_key)))
    except Exception as exc:  # noqa: BLE001 - the run is deleted regardless; say what was left
        logger.warning("could not delete the stored result of %s: %s", run["id"], exc)


def delete_stored(storage: Any, run_id: str, keys: Any) -> None:
    """Remove `keys` from a result storage (local or a remote filesystem block), and the
    run's own directory (`<run_id>/`) once empty."""
    for key in keys:
        if isinstance(storage, LocalFileSystem):
            path = storage._resolve_path(key)
            path.unlink(missing_ok=True)
            if path.parent.name == run_id:
                with contextlib.suppress(OSError):
                    path.parent.rmdir()
        elif hasattr(storage, "filesystem"):
            path = storage._resolve_path(key)
            if storage.filesystem.exists(path):
                storage.filesystem.rm(path)
