"""Stage 1: dataset rows -> dspy.Example splits.

Inline rows are mapped to examples in plain Python; pandas (about 0.4 s of CPU to import) is
imported only to read a `dataset_source` file, so a job with an inline dataset never pays for
it. How it fails: a JobError naming `dataset` or `dataset_source` (a missing mapped column, an
empty dataset, a file that cannot be read or is over the row limit)."""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dspy
import httpx

from dspy_service.code_checks import check_columns_present
from dspy_service.contract import Stage
from dspy_service.dataset_source import DatasetFormat, check_source, compression_of, is_remote, source_path
from dspy_service.errors import JobError
from dspy_service.registry import fit_to_splits, get_registry
from dspy_service.sandbox_inputs import readable_path
from dspy_service.schemas import JobSpec
from dspy_service.settings import get_settings
from tasks import stage

if TYPE_CHECKING:
    import pandas as pd

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
    import pandas as pd

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
    import numpy as np

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
        frame = _read_frame(readable_path(source), fmt)
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


def _missing_as_none(value: Any) -> Any:
    """NaN (a JSON `NaN`, or a missing CSV cell read by pandas) reads as a missing value."""
    return None if isinstance(value, float) and math.isnan(value) else value


def content_hash(rows: list[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def rows_to_examples(rows: list[dict[str, Any]], spec: JobSpec) -> list[dspy.Example]:
    """One example per row, with the mapped columns as signature fields (values as given)."""
    if not rows:
        raise JobError("dataset is empty", field="dataset")
    mapping = spec.column_mapping
    check_columns_present(rows, mapping.fields)
    input_fields = list(mapping.inputs)
    return [
        dspy.Example(**{f: _missing_as_none(row[col]) for f, col in mapping.fields.items()}).with_inputs(*input_fields)
        for row in rows
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
    examples = rows_to_examples(rows, spec)
    seed = spec.seed if spec.seed is not None else random.SystemRandom().randrange(2**31)
    train, val, test = split_examples(examples, spec, seed)
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
