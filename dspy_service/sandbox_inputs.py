"""Where a sandboxed engine reads its job's input files (stdlib only).

A sandbox started before its job was known (a warm sandbox, deployments/runtime/warm_sandbox.py)
cannot gain mounts: the supervisor copies the job's stored dataset (or a batch job's program
version) and its `dataset_source` file into the job's work directory instead, and tells the
engine in DSPY_SERVICE_SANDBOX_INPUTS (a JSON object: the URL or path as the job names it ->
the copy's path inside the sandbox). Everywhere else (a cold sandbox mounts the files at
their own paths; no sandbox) the variable is unset and a job reads what it names.

A malformed variable (only the supervisor writes it) reads as no copies: the job then reads
the original path and fails with the usual "does not exist" message.
"""

from __future__ import annotations

import json
import os

SANDBOX_INPUTS_ENV = "DSPY_SERVICE_SANDBOX_INPUTS"


def readable_path(url: str) -> str:
    """The path this process reads for the input `url`: its copy, or `url` itself."""
    raw = os.environ.get(SANDBOX_INPUTS_ENV)
    if not raw:
        return url
    try:
        copies = json.loads(raw)
    except ValueError:
        return url
    copy = copies.get(url) if isinstance(copies, dict) else None
    return copy if isinstance(copy, str) else url
