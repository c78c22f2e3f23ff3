"""`load_program`: a registered program as a ready `dspy.Module`, from an exported zip file
(or its extracted directory) or by name from the service. No pickle is read: the module
is rebuilt from the signature code and the JSON state (`build_program`).

    from dspy_service.client import load_program
    program = load_program("qa-v1.zip")                    # a file: no service needed
    program = load_program("qa", alias="production")       # a name: downloads the export

How it fails: a path that is no exported program raises ValueError naming what is
missing; a name that is not one of your programs raises `NotFound` (errors.py); signature
code that does not run raises ValueError (program.py).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dspy_service.client.program import build_program
from dspy_service.contract import PROGRAM_NAME_PATTERN
from dspy_service.program_export import MANIFEST_FILE, STATE_KEY, read_archive

if TYPE_CHECKING:
    from dspy_service.client.client import Client


def looks_like_path(path_or_name: str | Path) -> bool:
    """A Path, anything no program can be named (a '.', a '/'), or a directory holding an
    extracted export; otherwise a program name."""
    text = str(path_or_name)
    if isinstance(path_or_name, Path) or not re.fullmatch(PROGRAM_NAME_PATTERN, text):
        return True
    return (Path(text) / MANIFEST_FILE).is_file()


def load_program(
    path_or_name: str | Path,
    *,
    client: Client | None = None,
    version: int | None = None,
    alias: str | None = None,
) -> Any:
    """A `dspy.Module` from an exported program: a path (zip or directory) or a program name
    (then `version` or `alias`, default `latest`, picks the version; `client` defaults to
    `Client()` with its usual URL and token)."""
    if looks_like_path(path_or_name):
        if version is not None or alias is not None:
            raise ValueError("version and alias pick a version of a named program, not of a file")
        document = read_archive(path_or_name)
        return build_program(document, document[STATE_KEY])
    from dspy_service.client.client import Client

    owned = client is None
    client = client or Client()
    try:
        with tempfile.TemporaryDirectory(prefix="dspy-service-program-") as directory:
            archive = client.programs.export(str(path_or_name), version, Path(directory) / "program.zip", alias=alias)
            document = read_archive(archive)
    finally:
        if owned:
            client.close()
    return build_program(document, document[STATE_KEY])
