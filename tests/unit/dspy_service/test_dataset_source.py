"""`dataset_source`: the static check the API runs, and the readers the job runs (all four formats)."""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import threading

import pandas as pd
import pytest
from pydantic import ValidationError

from dspy_service.dataset_source import check_source
from dspy_service.errors import JobError
from dspy_service.schemas import JobRequest
from dspy_service.settings import get_settings
from tasks.data import content_hash, read_dataset_source
from tests.support.payloads import job_payload

ROWS = [
    {"question": "What is 1 + 2?", "answer": "3", "weight": 1.5, "note": "first"},
    {"question": "What is 2 + 2?", "answer": "4", "weight": None, "note": "second, with a comma"},
]


def write_all_formats(directory):
    frame = pd.DataFrame(ROWS)
    paths = {
        "csv": directory / "rows.csv",
        "jsonl": directory / "rows.jsonl",
        "json": directory / "rows.json",
        "parquet": directory / "rows.parquet",
    }
    frame.to_csv(paths["csv"], index=False)
    paths["jsonl"].write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    paths["json"].write_text(json.dumps(ROWS))
    frame.to_parquet(paths["parquet"])
    return paths


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_typed_formats_read_back_the_rows(tmp_path, fmt):
    path = write_all_formats(tmp_path)[fmt]
    assert read_dataset_source(str(path)) == ROWS
    assert read_dataset_source(f"file://{path}") == ROWS


def test_csv_values_are_typed_by_pandas(tmp_path):
    rows = read_dataset_source(str(write_all_formats(tmp_path)["csv"]))
    assert rows[0] == {"question": "What is 1 + 2?", "answer": 3, "weight": 1.5, "note": "first"}
    assert rows[1]["weight"] is None and rows[1]["note"] == "second, with a comma"
    assert type(rows[0]["answer"]) is int  # plain Python values, not numpy scalars


def test_compressed_files_and_explicit_format(tmp_path):
    source = tmp_path / "rows.jsonl.gz"
    with gzip.open(source, "wt") as handle:
        handle.write("".join(json.dumps(row) + "\n" for row in ROWS))
    assert read_dataset_source(str(source)) == ROWS
    unnamed = tmp_path / "export.data"
    unnamed.write_text(json.dumps(ROWS))
    assert read_dataset_source(str(unnamed), "json") == ROWS


@pytest.fixture
def http_dir(tmp_path):
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json", "parquet"])
def test_http_sources(http_dir, fmt):
    directory, base = http_dir
    write_all_formats(directory)
    rows = read_dataset_source(f"{base}/rows.{fmt}?version=2")
    assert [row["question"] for row in rows] == [row["question"] for row in ROWS]


def test_read_errors_are_job_errors_in_user_terms(tmp_path, http_dir):
    with pytest.raises(JobError, match="does not exist on this worker") as info:
        read_dataset_source(str(tmp_path / "missing.csv"))
    assert info.value.field == "dataset_source"
    _, base = http_dir
    with pytest.raises(JobError, match="404"):
        read_dataset_source(f"{base}/missing.jsonl")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(JobError, match="could not read dataset_source .* as json"):
        read_dataset_source(str(broken))


class GzipBombHandler(http.server.BaseHTTPRequestHandler):
    """Serves /bomb.jsonl: a few KB on the wire (Content-Length says so) that decode to ~2 MB."""

    BODY = gzip.compress(("".join(json.dumps(row) + "\n" for row in ROWS) * 10_000).encode())

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(self.BODY)))
        self.end_headers()
        self.wfile.write(self.BODY)

    def log_message(self, *args):
        pass


@pytest.fixture
def fetch_cap_mb(monkeypatch):
    """DSPY_SERVICE_MAX_FETCH_MB set to the given value for this test."""

    def cap(megabytes: float) -> None:
        monkeypatch.setenv("DSPY_SERVICE_MAX_FETCH_MB", str(megabytes))
        get_settings.cache_clear()

    yield cap
    get_settings.cache_clear()


def test_a_download_over_the_cap_fails_naming_the_cap_and_how_to_raise_it(http_dir, fetch_cap_mb):
    directory, base = http_dir
    (directory / "big.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS) * 20)  # ~3 KB
    fetch_cap_mb(0.01)  # ~10 KB
    assert len(read_dataset_source(f"{base}/big.jsonl")) == 40
    fetch_cap_mb(0.002)  # ~2 KB: the declared Content-Length is over it
    with pytest.raises(JobError, match=r"larger than 0.002 MB.*DSPY_SERVICE_MAX_FETCH_MB") as info:
        read_dataset_source(f"{base}/big.jsonl")
    assert info.value.field == "dataset_source"


def test_the_cap_counts_decoded_bytes_not_the_declared_length(fetch_cap_mb):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), GzipBombHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert len(GzipBombHandler.BODY) < 100 * 1024
        fetch_cap_mb(1)
        with pytest.raises(JobError, match="larger than 1 MB"):
            read_dataset_source(f"http://127.0.0.1:{server.server_address[1]}/bomb.jsonl")
        fetch_cap_mb(4)
        assert len(read_dataset_source(f"http://127.0.0.1:{server.server_address[1]}/bomb.jsonl")) == 20_000
    finally:
        server.shutdown()
        server.server_close()


def test_changed_file_changes_count_and_hash(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n")
    first = read_dataset_source(str(path))
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    second = read_dataset_source(str(path))
    assert (len(first), len(second)) == (1, 2)
    assert content_hash(first) != content_hash(second)


@pytest.mark.parametrize(
    "source, message",
    [
        ("data/train.csv", "absolute file path"),
        ("s3://bucket/train.csv", "unsupported scheme 's3'"),
        ("file://data/train.csv", "absolute path"),
        ("https:///train.csv", "not a valid https URL"),
        ("/data/train.txt", "cannot tell the file format"),
    ],
)
def test_static_check_rejects(source, message):
    with pytest.raises(ValueError, match=message):
        check_source(source)


def test_static_check_accepts():
    assert check_source("/data/train.csv") == "csv"
    assert check_source("https://example.org/export?id=3", "jsonl") == "jsonl"
    assert check_source("https://example.org/a/train.parquet?sig=x") == "parquet"
    assert check_source("/data/train.ndjson.gz") == "jsonl"


def payload(**overrides):
    return job_payload("http://127.0.0.1:9/v1", **overrides)


def test_request_needs_exactly_one_dataset():
    body = payload()
    body.pop("dataset")
    with pytest.raises(ValidationError) as info:
        JobRequest.model_validate(body)
    assert info.value.errors()[0]["loc"] == ("dataset",)
    with pytest.raises(ValidationError) as info:
        JobRequest.model_validate(payload(dataset_source="/data/train.csv"))
    assert info.value.errors()[0]["loc"] == ("dataset",)
    with pytest.raises(ValidationError) as info:
        JobRequest.model_validate(payload(dataset=None, dataset_source="train.csv"))
    assert [e["loc"] for e in info.value.errors()] == [("dataset_source",)]  # one error, the real one
    request = JobRequest.model_validate(payload(dataset=None, dataset_source=" /data/train.csv "))
    assert request.spec().dataset_source == "/data/train.csv" and request.dataset is None


def test_a_file_source_must_lie_in_an_allowed_directory_and_outside_the_service_home(tmp_path):
    from dspy_service.dataset_source import file_source_problem

    data, home = tmp_path / "data", tmp_path / "data" / "home"
    home.mkdir(parents=True)
    (data / "train.csv").write_text("q,a\n")
    (home / "prefect.db").write_text("keys")
    (data / "link.csv").symlink_to(home / "prefect.db")
    assert file_source_problem(str(data / "train.csv"), str(data), [str(home)]) is None
    assert "DSPY_SERVICE_DATASET_DIRS" in file_source_problem(str(data / "train.csv"), "", [str(home)])
    for refused in (home / "prefect.db", data / "link.csv", tmp_path / "elsewhere.csv", data / ".." / "x.csv"):
        assert "not in a directory jobs may read" in file_source_problem(str(refused), str(data), [str(home)])


def test_a_path_no_file_system_can_name_is_a_problem_not_an_error(tmp_path):
    from dspy_service.dataset_source import file_source_problem

    assert "not a valid file path" in file_source_problem("/data/\udc2e.csv", str(tmp_path), [])
