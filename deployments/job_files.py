"""Files of the jobs CLI: the job file `dspy-service submit` reads, and the directory
`dspy-service jobs artifact` writes.

A job file is a POST /run body in YAML (`.yaml`, `.yml`) or JSON (`.json`). Three keys
name files instead of holding their content; a relative path is relative to the job file:

    signature_code_file: sig.py     -> signature_code (the file's text)
    metric_code_file: metric.py     -> metric_code (the file's text)
    dataset_file: rows.csv          -> dataset (inline rows)

A key and its `_file` form together is an error. Datasets: `.csv` (every cell a string,
empty cells empty strings), `.jsonl`/`.ndjson` (one JSON object a line), `.json` (a list of
objects) and `.parquet` (values keep their types; missing values become null).
"""

from __future__ import annotations

import json
import pprint
from pathlib import Path
from typing import Any

FILE_KEYS = {"signature_code_file": "signature_code", "metric_code_file": "metric_code"}
DATASET_FILE_KEY = "dataset_file"
DATASET_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".json", ".parquet")


class JobFileError(ValueError):
    """A job file (or a file it names) that cannot be read or used; the message names the key."""


def load_job_file(path: str | Path) -> dict[str, Any]:
    """The POST /run body that the job file at `path` describes (file references resolved)."""
    path = Path(path)
    body = _parse(path)
    base = path.resolve().parent
    for key, target in FILE_KEYS.items():
        if key in body:
            _not_both(body, key, target)
            body[target] = _read_text(base, key, body.pop(key))
    if DATASET_FILE_KEY in body:
        _not_both(body, DATASET_FILE_KEY, "dataset")
        body["dataset"] = read_dataset(_resolve(base, DATASET_FILE_KEY, body.pop(DATASET_FILE_KEY)))
    return body


def _parse(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise JobFileError(f"job file {path}: give a .yaml, .yml or .json file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise JobFileError(f"cannot read the job file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        if suffix == ".json":
            body = json.loads(text)
        else:
            import yaml

            body = yaml.safe_load(text)
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
        raise JobFileError(f"job file {path} does not parse: {exc}") from None
    if not isinstance(body, dict):
        raise JobFileError(f"job file {path}: the top level must be a mapping (the POST /run body)")
    return body


def _not_both(body: dict[str, Any], key: str, target: str) -> None:
    if target in body:
        raise JobFileError(f"{key}: give either {target} or {key}, not both")


def _resolve(base: Path, key: str, value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise JobFileError(f"{key}: a file path (relative to the job file) is expected, got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _read_text(base: Path, key: str, value: Any) -> str:
    path = _resolve(base, key, value)
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise JobFileError(f"{key}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


def read_dataset(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV, JSON Lines, JSON or Parquet file, as JSON values."""
    suffix = path.suffix.lower()
    if suffix not in DATASET_SUFFIXES:
        raise JobFileError(f"dataset_file: {path.name}: give a {', '.join(DATASET_SUFFIXES)} file")
    try:
        if suffix == ".json":
            rows = json.loads(path.read_text())
        else:
            rows = _read_with_pandas(path, suffix)
    except OSError as exc:
        raise JobFileError(f"dataset_file: cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # parse errors of pandas, pyarrow and json
        raise JobFileError(f"dataset_file: {path.name} does not parse: {type(exc).__name__}: {exc}") from None
    if not isinstance(rows, list) or not rows or not all(isinstance(row, dict) for row in rows):
        raise JobFileError(f"dataset_file: {path.name} must hold at least one row of named columns")
    return rows


def _read_with_pandas(path: Path, suffix: str) -> list[dict[str, Any]]:
    import pandas as pd

    if suffix == ".csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    elif suffix == ".parquet":
        frame = pd.read_parquet(path)
    else:
        frame = pd.read_json(path, lines=True, dtype=False)
    # Through JSON: numpy scalars become plain numbers, NaN becomes null, timestamps ISO strings.
    return json.loads(frame.to_json(orient="records", date_format="iso", force_ascii=False))


# ---- the artifact directory --------------------------------------------------------------


def write_artifact_dir(job_id: str, artifact: dict[str, Any], directory: str | Path) -> list[Path]:
    """program.json, signature.py, metric.py and README.md of a job's artifact (GET
    /jobs/{id}/artifact) in `directory` (created); the paths written."""
    source = artifact.get("program_source") or {}
    program = artifact.get("program_artifact") or {}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "program.json": json.dumps(program.get("program_state") or {}, indent=2) + "\n",
        "signature.py": source.get("signature_code") or "",
        "metric.py": source.get("metric_code") or "",
        "README.md": artifact_readme(job_id, source, program),
    }
    written = []
    for name, text in files.items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


def module_class(module_name: str) -> str | None:
    """The DSPy class a job's module name builds (None for a plugin's module)."""
    from dspy_service.registry import ALLOWED_DOTTED_PREFIX, BUILTIN_MODULES

    if module_name in BUILTIN_MODULES:
        return BUILTIN_MODULES[module_name]
    return module_name if module_name.startswith(ALLOWED_DOTTED_PREFIX) else None


def example_call(program: dict[str, Any]) -> str:
    """`program(question="...")` with the program's input fields."""
    prompt = program.get("optimized_prompt") or {}
    fields = prompt.get("input_fields") or ["question"]
    return "program(" + ", ".join(f'{name}="..."' for name in fields) + ")"


def plain_dspy_snippet(source: dict[str, Any], program: dict[str, Any]) -> str:
    module_name = source.get("module_name") or "predict"
    kwargs = source.get("module_kwargs") or {}
    cls = module_class(module_name)
    build = (
        f"program = {cls}(signature, **{pprint.pformat(kwargs)})"
        if cls
        else f"program = ...  # module {module_name!r} is a plugin of the service: build it from `signature` as it does"
    )
    return f"""import json

import dspy

namespace = {{"__name__": "signature"}}
exec(open("signature.py").read(), namespace)
signature = next(
    value for value in namespace.values()
    if isinstance(value, type) and issubclass(value, dspy.Signature) and value.__module__ == "signature"
)
{build}
program.load_state(json.load(open("program.json")))

dspy.configure(lm=dspy.LM("openai/gpt-4o-mini"))  # the model to run it with
print({example_call(program)})
"""


def client_snippet(source: dict[str, Any], program: dict[str, Any]) -> str:
    module_name = source.get("module_name") or "predict"
    kwargs = source.get("module_kwargs") or {}
    return f"""import json

import dspy
from dspy_service.client import build_program

source = {{
    "module_name": {module_name!r},
    "module_kwargs": {pprint.pformat(kwargs)},
    "signature_code": open("signature.py").read(),
    "metric_code": open("metric.py").read(),
}}
program = build_program(source, json.load(open("program.json")))

dspy.configure(lm=dspy.LM("openai/gpt-4o-mini"))  # the model to run it with
print({example_call(program)})
"""


def artifact_readme(job_id: str, source: dict[str, Any], program: dict[str, Any]) -> str:
    module_name = source.get("module_name") or "?"
    return f"""# Optimized program of job {job_id}

Written by `dspy-service jobs artifact {job_id}`.

| file | what it holds |
|---|---|
| `program.json` | the optimized program's JSON state (demos, instructions): `program.load_state(...)` reads it |
| `signature.py` | the job's `signature_code`: one `dspy.Signature` subclass |
| `metric.py` | the job's `metric_code` (for evaluating the program yourself) |

Module: `{module_name}` with kwargs `{json.dumps(source.get("module_kwargs") or {})}`. No pickle is
involved: the program is rebuilt from its signature and loaded from JSON. Run the snippets in
this directory.

## In plain DSPy

```python
{plain_dspy_snippet(source, program)}```

## With the dspy-service client

```python
{client_snippet(source, program)}```
"""
