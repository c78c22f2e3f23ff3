"""Stage 1: dataset rows -> DataFrame -> dspy.Example splits."""

from __future__ import annotations

import hashlib
import io
import json
import random
import socket
from dataclasses import dataclass, field
from typing import Any

import dspy
import httpx
import numpy as np
import pandas as pd

from dspy_service.code_checks import check_columns_present
from dspy_service.contract import Stage
from dspy_service.dataset_source import DatasetFormat, check_source, compression_of, is_remote, source_path
from dspy_service.errors import JobError
from dspy_service.registry import fit_to_splits, get_registry
from dspy_service.schemas import JobSpec
from dspy_service.settings import get_settings
from tasks import stage

SOURCE_TIMEOUT_SECONDS = 60


@dataclass
class DataSplits:
    train: list[dspy.Example]
    val: list[dspy.Example]
    test: list[dspy.Example]
    rows: int
    content_sha256: str
    seed: int
    # Batch sizes shrunk to fit the splits (see registry.fit_to_splits).
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    compile_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _too_large(url: str, limit_mb: float) -> JobError:
    return JobError(
        f"dataset_source {url} is larger than {limit_mb:g} MB, the most this service downloads; the operator "
        "may raise it with DSPY_SERVICE_MAX_FETCH_MB",
        field="dataset_source",
    )


def _fetch(url: str) -> io.BytesIO:
    """Download a remote source with a timeout (pandas' own urlopen has none) and a size
    cap (DSPY_SERVICE_MAX_FETCH_MB, counted on the decoded bytes); JobError over the cap."""
    limit_mb = get_settings().max_fetch_mb
    limit = int(limit_mb * 1024 * 1024)
    content = io.BytesIO()
    with httpx.stream("GET", url, timeout=SOURCE_TIMEOUT_SECONDS, follow_redirects=True) as response:
        response.raise_for_status()
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(url, limit_mb)
        for chunk in response.iter_bytes():
            content.write(chunk)
            if content.tell() > limit:
                raise _too_large(url, limit_mb)
    content.seek(0)
    return content


def _read_frame(source: str, fmt: DatasetFormat) -> pd.DataFrame:
    target: Any = source
    compression: Any = "infer"
    if is_remote(source):
        target = _fetch(source)
        compression = compression_of(source)
    elif source.startswith("file://"):
        target = source_path(source)
    if fmt == "csv":
        return pd.read_csv(target, compression=compression)
    if fmt == "jsonl":
        return pd.read_json(target, lines=True, dtype=False, compression=compression)
    if fmt == "json":
        # A JSON array of row objects (pandas' "records" orientation).
        return pd.read_json(target, orient="records", dtype=False, compression=compression)
    return pd.read_parquet(target)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):  # list columns of Parquet files
        return value.tolist()
    return value


def frame_to_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Plain Python rows like inline `dataset` rows: missing values -> None, numpy -> Python."""
    frame = frame.astype(object).where(frame.notna(), None)
    return [{str(k): _plain(v) for k, v in record.items()} for record in frame.to_dict("records")]


def read_dataset_source(source: str, fmt: DatasetFormat | None = None) -> list[dict[str, Any]]:
    """Read a CSV / JSON Lines / JSON / Parquet file or URL into rows, as it is right now."""
    fmt = check_source(source, fmt)
    try:
        frame = _read_frame(source, fmt)
    except FileNotFoundError:
        raise JobError(
            f"dataset_source {source} does not exist on this worker ({socket.gethostname()}); "
            "file paths must be readable by every worker host",
            field="dataset_source",
        ) from None
    except JobError:
        raise
    except Exception as exc:  # HTTP errors, parse errors, ... in the user's terms
        raise JobError(
            f"could not read dataset_source {source} as {fmt}: {type(exc).__name__}: {exc}",
            field="dataset_source",
        ) from None
    limit = get_settings().max_dataset_rows
    if len(frame) > limit:
        raise JobError(f"dataset_source has {len(frame)} rows; the limit is {limit}", field="dataset_source")
    return frame_to_rows(frame)


def rows_to_frame(rows: list[dict[str, Any]], spec: JobSpec) -> pd.DataFrame:
    if not rows:
        raise JobError("dataset is empty", field="dataset")
    check_columns_present(rows, spec.column_mapping.fields)
    return pd.DataFrame.from_records(rows)


def content_hash(rows: list[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def frame_to_examples(frame: pd.DataFrame, spec: JobSpec) -> list[dspy.Example]:
    mapping = spec.column_mapping
    columns = list(dict.fromkeys(mapping.fields.values()))
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise JobError(
            f"dataset has no column(s) {missing} named in column_mapping; its columns are "
            f"{list(frame.columns)[:20]}",
            field="dataset",
        )
    # Object dtype keeps Python values (ints stay ints, None stays None) instead of numpy.
    records = frame[columns].astype(object).where(frame[columns].notna(), None).to_dict("records")
    input_fields = list(mapping.inputs)
    return [
        dspy.Example(**{f: record[col] for f, col in mapping.fields.items()}).with_inputs(*input_fields)
        for record in records
    ]


def split_examples(
    examples: list[dspy.Example], spec: JobSpec, seed: int
) -> tuple[list[dspy.Example], list[dspy.Example], list[dspy.Example]]:
    order = list(range(len(examples)))
    if spec.shuffle:
        random.Random(seed).shuffle(order)
    counts = spec.split_fractions.counts(len(examples))
    shuffled = [examples[i] for i in order]
    train_end = counts["train"]
    val_end = train_end + counts["val"]
    return shuffled[:train_end], shuffled[train_end:val_end], shuffled[val_end:]


@stage(Stage.LOAD_DATA)
def load_and_split_data(spec: JobSpec, rows: list[dict[str, Any]] | None) -> DataSplits:
    """Map columns to signature fields, shuffle with the job's seed, split, check sizes.

    `rows` is None for a job with a `dataset_source`: it is read now, at every run."""
    if rows is None:
        if not spec.dataset_source:
            raise JobError("the job has no dataset", field="dataset")
        rows = read_dataset_source(spec.dataset_source, spec.dataset_format)
    frame = rows_to_frame(rows, spec)
    seed = spec.seed if spec.seed is not None else random.SystemRandom().randrange(2**31)
    train, val, test = split_examples(frame_to_examples(frame, spec), spec, seed)
    counts = {"train": len(train), "val": len(val), "test": len(test)}
    entry = get_registry().optimizer(spec.optimizer_name)
    optimizer_kwargs, compile_kwargs = fit_to_splits(entry, counts, spec.optimizer_kwargs, spec.compile_kwargs)
    return DataSplits(
        train=train,
        val=val,
        test=test,
        rows=len(rows),
        content_sha256=content_hash(rows),
        seed=seed,
        optimizer_kwargs=optimizer_kwargs,
        compile_kwargs=compile_kwargs,
    )
