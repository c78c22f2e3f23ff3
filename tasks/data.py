"""Stage 1: dataset rows -> DataFrame -> dspy.Example splits."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any

import dspy
import pandas as pd

from dspy_service.code_checks import check_columns_present
from dspy_service.errors import JobError
from dspy_service.registry import fit_to_splits, get_registry
from dspy_service.schemas import JobSpec
from tasks import stage


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


@stage("load-and-split-data")
def load_and_split_data(spec: JobSpec, rows: list[dict[str, Any]]) -> DataSplits:
    """Map columns to signature fields, shuffle with the job's seed, split, check sizes."""
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
