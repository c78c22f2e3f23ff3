"""Datasets by reference: which `dataset_source` strings a job may give (no I/O here, but
`file_source_problem`, which resolves symlinks).

A source is an absolute file path (or file:// URL) on the worker hosts, or an http(s) URL,
of a CSV, JSON Lines, JSON or Parquet file. The API checks only the string (this module);
the file is read inside the job, at every run (tasks/data.py), so a recurring job sees the
data as it is when the run starts.
"""

from __future__ import annotations

import os
import posixpath
from typing import Literal
from urllib.parse import urlparse

DatasetFormat = Literal["csv", "jsonl", "json", "parquet"]

# File name endings -> format; compressed text files (.csv.gz, ...) are fine for pandas.
SUFFIX_FORMATS: dict[str, DatasetFormat] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
}
COMPRESSION_SUFFIXES = {".gz": "gzip", ".bz2": "bz2", ".zip": "zip", ".xz": "xz", ".zst": "zstd"}
REMOTE_SCHEMES = ("http", "https")


def source_path(source: str) -> str:
    """The path part of a source: a URL's path, or the file path itself."""
    parsed = urlparse(source)
    if parsed.scheme in (*REMOTE_SCHEMES, "file"):
        return parsed.path
    return source


def is_remote(source: str) -> bool:
    return urlparse(source).scheme in REMOTE_SCHEMES


def compression_of(source: str) -> str | None:
    """pandas' `compression` for the source's name ending (None: not compressed)."""
    name = posixpath.basename(source_path(source)).lower()
    for suffix, compression in COMPRESSION_SUFFIXES.items():
        if name.endswith(suffix):
            return compression
    return None


def infer_format(source: str) -> DatasetFormat | None:
    name = posixpath.basename(source_path(source)).lower()
    for suffix in COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
    return SUFFIX_FORMATS.get(posixpath.splitext(name)[1])


def check_source(source: str, explicit_format: DatasetFormat | None = None) -> DatasetFormat:
    """The source's format; ValueError (a 422 on the wire) for strings no worker could read."""
    source = source.strip()
    parsed = urlparse(source)
    if parsed.scheme in REMOTE_SCHEMES:
        if not parsed.netloc:
            raise ValueError(f"{source!r} is not a valid {parsed.scheme} URL")
    elif parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise ValueError("a file:// URL needs an absolute path, e.g. file:///data/train.csv")
    elif parsed.scheme:
        raise ValueError(f"unsupported scheme {parsed.scheme!r}: give an absolute file path or an http(s) URL")
    elif not source.startswith("/"):
        raise ValueError(
            "give an absolute file path (jobs run in worker processes whose working directory "
            "is not yours) or an http(s) URL"
        )
    fmt = explicit_format or infer_format(source)
    if fmt is None:
        endings = ", ".join(sorted(SUFFIX_FORMATS))
        raise ValueError(
            f"cannot tell the file format of {source!r}: name it with one of {endings} or set dataset_format"
        )
    return fmt


def file_source_problem(path: str, allowed_dirs: str, private_dirs: list[str]) -> str | None:
    """Why a job may not read the file `path` (None: it may): after resolving symlinks it
    must lie in one of the comma-separated `allowed_dirs` (DSPY_SERVICE_DATASET_DIRS) and in
    none of `private_dirs` (the service home: databases, results, caches of every tenant)."""
    try:
        real = os.path.realpath(path)
    except ValueError:  # e.g. lone surrogates: no file system can name it
        return f"{path!r} is not a valid file path"
    allowed = [os.path.realpath(d.strip()) for d in allowed_dirs.split(",") if d.strip()]
    if not allowed:
        return "file paths are not enabled on this service (the operator sets DSPY_SERVICE_DATASET_DIRS)"
    inside = [d for d in allowed if real == d or real.startswith(d.rstrip("/") + "/")]
    private = [d for d in map(os.path.realpath, private_dirs) if real == d or real.startswith(d.rstrip("/") + "/")]
    if not inside or private:
        return f"{path} is not in a directory jobs may read ({', '.join(allowed)})"
    return None
