"""An optimized program rebuilt from what a job returns: the signature's code, the module
name and kwargs, and the JSON program state. No pickle is read, so it works in any fresh
process with dspy installed.

How it fails: signature code that does not run, or that does not define exactly one
`dspy.Signature` subclass, raises ValueError saying so; a state that does not fit the
module (another signature) raises DSPy's own error from `load_state`.
"""

from __future__ import annotations

import linecache
import uuid
from typing import Any


def signature_from_code(signature_code: str) -> type:
    """The one `dspy.Signature` subclass that `signature_code` defines."""
    import dspy

    module_name = f"dspy_service_signature_{uuid.uuid4().hex[:12]}"
    filename = "<signature_code>"
    linecache.cache[filename] = (len(signature_code), None, signature_code.splitlines(keepends=True), filename)
    namespace: dict[str, Any] = {"__name__": module_name, "dspy": dspy}
    try:
        exec(compile(signature_code, filename, "exec", dont_inherit=True), namespace)  # noqa: S102 - the caller's own code
    except Exception as exc:
        raise ValueError(f"signature_code does not run: {type(exc).__name__}: {exc}") from exc
    found = [
        value
        for value in namespace.values()
        if isinstance(value, type) and issubclass(value, dspy.Signature) and value.__module__ == module_name
    ]
    if len(found) != 1:
        names = ", ".join(v.__name__ for v in found) or "none"
        raise ValueError(f"signature_code must define exactly one dspy.Signature subclass; it defines {names}")
    return found[0]


def build_program(program_source: dict[str, Any], program_state: dict[str, Any] | None = None) -> Any:
    """A ready `dspy.Module`: `program_source` is {module_name, module_kwargs, signature_code}
    (GET /jobs/{id}/artifact's `program_source`), `program_state` its `program_state`."""
    from dspy_service.registry import get_registry

    signature = signature_from_code(program_source["signature_code"])
    entry = get_registry().module(program_source["module_name"])
    program = entry.factory(signature, **(program_source.get("module_kwargs") or {}))
    if program_state:
        program.load_state(program_state)
    return program
