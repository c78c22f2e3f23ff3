"""A registered version as a zip file anyone can load, and the reading of one.

The archive (GET /programs/{name}/versions/{v}/export) holds:

- `program.json`: the DSPy JSON state (`program.load_state(json.load(...))`);
- `signature.py`: the signature's code (defines one `dspy.Signature` subclass);
- `manifest.json`: the version's document without the program state (module name and
  kwargs, fields, metrics, dataset rows and SHA-256, metric-code hash, model config with
  credential names only, versions of dspy and of this service, job id);
- `README.md`: how to load it.

Pure: no Prefect, no network, no pickle; the API writes archives and the client's
`load_program` reads them (a zip file or the directory it was extracted to). How it
fails: `ValueError` naming the file an archive lacks or that is not valid JSON.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

from dspy_service.registry import BUILTIN_MODULES

STATE_FILE = "program.json"
SIGNATURE_FILE = "signature.py"
MANIFEST_FILE = "manifest.json"
README_FILE = "README.md"
STATE_KEY = "program_state"

README = """# {name} v{version}

A DSPy program exported from dspy-service (module `{module_name}`, job `{job_id}`).

| file | what it is |
|---|---|
| `program.json` | the optimized program's DSPy JSON state |
| `signature.py` | the signature's code |
| `manifest.json` | module name and kwargs, fields, metrics, dataset and model facts, versions |

## Load it with the service's client (no pickle)

```python
import dspy
from dspy_service.client import load_program

program = load_program("{name}-v{version}.zip")   # or the directory it was extracted to
with dspy.context(lm=dspy.LM("{model}")):
    print(program({example_call}))
```

## Load it with plain DSPy

```python
import json
import dspy

namespace = {{"dspy": dspy}}
exec(open("signature.py").read(), namespace)       # your own signature code
signature = next(v for v in namespace.values()
                 if isinstance(v, type) and issubclass(v, dspy.Signature) and v is not dspy.Signature)
program = {constructor}(signature{kwargs})
program.load_state(json.load(open("program.json")))
```
"""


def manifest_of(document: dict[str, Any]) -> dict[str, Any]:
    """The document without its (large) program state."""
    return {key: value for key, value in document.items() if key != STATE_KEY}


def readme_of(document: dict[str, Any]) -> str:
    module = str(document.get("module_name") or "predict")
    kwargs = document.get("module_kwargs") or {}
    inputs = document.get("input_fields") or ["question"]
    return README.format(
        name=document.get("name"),
        version=document.get("version"),
        module_name=module,
        job_id=document.get("job_id"),
        model=(document.get("model_config") or {}).get("name") or "openai/gpt-4o-mini",
        example_call=", ".join(f'{field}="..."' for field in inputs),
        constructor=BUILTIN_MODULES.get(module, f"<the module registered as {module!r}>"),
        kwargs="".join(f", {key}={value!r}" for key, value in kwargs.items()),
    )


def export_archive(document: dict[str, Any]) -> bytes:
    """The zip file of a version's document."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(STATE_FILE, json.dumps(document.get(STATE_KEY) or {}, indent=2))
        archive.writestr(SIGNATURE_FILE, str(document.get("signature_code") or ""))
        archive.writestr(MANIFEST_FILE, json.dumps(manifest_of(document), indent=2, default=str))
        archive.writestr(README_FILE, readme_of(document))
    return buffer.getvalue()


def _read_files(path: Path) -> dict[str, bytes]:
    wanted = (STATE_FILE, SIGNATURE_FILE, MANIFEST_FILE)
    if path.is_dir():
        return {name: (path / name).read_bytes() for name in wanted if (path / name).is_file()}
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        return {name: archive.read(name) for name in wanted if name in names}


def _json(files: dict[str, bytes], name: str) -> dict[str, Any]:
    try:
        value = json.loads(files[name])
    except ValueError:
        raise ValueError(f"{name} in the exported program is not valid JSON") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} in the exported program is not a JSON object")
    return value


def read_archive(path: str | Path) -> dict[str, Any]:
    """An exported archive (zip file or extracted directory) as a document: the manifest's
    keys plus `signature_code` (signature.py) and `program_state` (program.json)."""
    path = Path(path)
    try:
        files = _read_files(path)
    except zipfile.BadZipFile:
        raise ValueError(f"{path} is neither a zip file nor a directory of an exported program") from None
    missing = [name for name in (STATE_FILE, SIGNATURE_FILE, MANIFEST_FILE) if name not in files]
    if missing:
        raise ValueError(f"{path} is not an exported program: it has no {', '.join(missing)}")
    document = _json(files, MANIFEST_FILE)
    document["signature_code"] = files[SIGNATURE_FILE].decode()
    document[STATE_KEY] = _json(files, STATE_FILE)
    if not document.get("module_name"):
        raise ValueError(f"{MANIFEST_FILE} in {path} names no module_name")
    return document
