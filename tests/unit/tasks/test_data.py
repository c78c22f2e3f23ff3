"""Stage 1 on inline rows: values reach the examples as given, and pandas is not imported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dspy_service.errors import JobError
from dspy_service.schemas import JobRequest
from tasks.data import load_and_split_data, rows_to_examples
from tests.support.payloads import job_payload


def spec_of(**overrides):
    return JobRequest.model_validate(job_payload("http://127.0.0.1:1", **overrides)).spec()


def test_mapped_values_reach_the_examples_unchanged_and_nan_reads_as_missing():
    rows = [
        {"question": "1 + 1", "answer": 2, "unmapped": "x"},
        {"question": "2 + 2", "answer": None},
        {"question": "3 + 3", "answer": float("nan")},
    ]
    examples = rows_to_examples(rows, spec_of())
    assert [e.answer for e in examples] == [2, None, None]
    assert type(examples[0].answer) is int  # not 2.0, as a column with a gap in a DataFrame would make it
    assert [e.question for e in examples] == ["1 + 1", "2 + 2", "3 + 3"]
    assert all(set(e.inputs().keys()) == {"question"} for e in examples)
    assert "unmapped" not in examples[0]


def test_a_row_without_a_mapped_column_and_an_empty_dataset_name_the_dataset():
    with pytest.raises(JobError, match=r"dataset row 1 has no column\(s\) \['answer'\]") as missing:
        rows_to_examples([{"question": "1 + 1", "answer": 2}, {"question": "2 + 2"}], spec_of())
    assert missing.value.field == "dataset"
    with pytest.raises(JobError, match="dataset is empty") as empty:
        rows_to_examples([], spec_of())
    assert empty.value.field == "dataset"


def test_a_job_with_inline_rows_does_not_import_pandas():
    """pandas costs about 0.4 s of CPU per job start; only a dataset_source needs it."""
    payload = job_payload("http://127.0.0.1:1", rows=20)
    code = (
        "import json, sys\n"
        "from dspy_service.schemas import JobRequest\n"
        "import flows.optimize\n"
        "from tasks.data import load_and_split_data\n"
        "request = JobRequest.model_validate(json.loads(sys.stdin.read()))\n"
        "splits = load_and_split_data.fn(request.spec(), request.dataset)\n"
        "print(json.dumps({'rows': splits.rows, 'pandas': 'pandas' in sys.modules}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(payload), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"rows": 20, "pandas": False}


def test_the_splits_are_those_of_the_seed():
    spec = spec_of(rows=20, seed=7)
    payload = job_payload("http://127.0.0.1:1", rows=20, seed=7)
    first = load_and_split_data.fn(spec, payload["dataset"])
    again = load_and_split_data.fn(spec, payload["dataset"])
    assert first.counts == again.counts and sum(first.counts.values()) == 20
    assert [e.question for e in first.test] == [e.question for e in again.test]
