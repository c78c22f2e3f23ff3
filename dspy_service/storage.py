"""Shared storage for job datasets: any fsspec URL every API and worker host can reach.

A flow-run parameter is capped at 512 KiB by Prefect, so the API stores the rows here and
passes the flow only their URL. The default is a local directory (one machine); point
`DSPY_SERVICE_STORAGE_URL` at NFS, s3://... or similar when workers run on other hosts.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import fsspec
import orjson

from dspy_service.sandbox_inputs import readable_path
from dspy_service.schemas import DatasetRef
from dspy_service.settings import get_settings

DATASETS_DIR = "datasets"


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def dataset_url(name: str) -> str:
    return _join(get_settings().resolved_storage_url, DATASETS_DIR, name)


def save_dataset(rows: list[dict[str, Any]]) -> DatasetRef:
    """Write rows as JSON; returns the reference to hand to the flow."""
    return _save_json(rows, f"{uuid.uuid4().hex}.json", len(rows))


def save_document(document: dict[str, Any]) -> DatasetRef:
    """Write one JSON object (a batch job's copy of its program version) next to the
    datasets, so it is mounted, checked and deleted like a job's rows; read it back with
    `load_dataset`."""
    return _save_json(document, f"{uuid.uuid4().hex}.program.json", 1)


def _save_json(value: Any, name: str, rows: int) -> DatasetRef:
    data = orjson.dumps(value)
    url = dataset_url(name)
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as handle:
        handle.write(data)
    return DatasetRef(url=url, rows=rows, sha256=hashlib.sha256(data).hexdigest())


def load_dataset(ref: DatasetRef) -> Any:
    with fsspec.open(readable_path(ref.url), "rb") as handle:
        data = handle.read()
    if ref.sha256 and hashlib.sha256(data).hexdigest() != ref.sha256:
        raise ValueError(f"stored dataset {ref.url} does not match its checksum")
    return orjson.loads(data)


def delete_dataset(url: str) -> None:
    """Remove a stored dataset; only URLs under our own datasets directory are touched."""
    if not url.startswith(dataset_url("")):
        return
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path)
