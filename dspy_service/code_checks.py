"""Static checks of user-submitted signature and metric code (parse + AST, never exec).

The API runs these before queueing a job, so that obvious mistakes come back as a 400
at once; the flow runs them again before executing the code, so a job submitted some
other way (a schedule, the Prefect UI) fails with the same words.

Failures: JobError naming the field for every problem, including every way the parser can
fail on hostile input (SyntaxError, RecursionError and MemoryError on deep nesting,
ValueError on null bytes or lone surrogates); the AST is walked without recursion. Parses
are serialized per process (`_PARSE_LOCK`): CPython 3.11's parser is not safe in threads.
"""

from __future__ import annotations

import ast
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from dspy_service.errors import JobError

_FIELD_CALLS = {"InputField": "input", "OutputField": "output"}
SHOWN_LINE_CHARS = 120  # of the offending line, in a syntax error's message


@dataclass
class SignatureOutline:
    name: str
    input_fields: list[str] = field(default_factory=list)
    output_fields: list[str] = field(default_factory=list)
    # False when the class inherits fields from a class we cannot see statically.
    complete: bool = True


def check_code_size(source: str, field_name: str, max_kb: int) -> None:
    """At most `max_kb` KB of UTF-8 (DSPY_SERVICE_MAX_CODE_KB)."""
    size = len(source.encode("utf-8", "surrogatepass"))
    if size > max_kb * 1024:
        raise JobError(
            f"{field_name} is {size / 1024:.0f} KB; this service accepts at most {max_kb} KB "
            "(DSPY_SERVICE_MAX_CODE_KB)",
            field=field_name,
        )


@contextmanager
def parse_failures_named(field_name: str) -> Iterator[None]:
    """Every way parsing or walking user code can fail becomes a JobError naming the field:
    the parser and the AST builder raise RecursionError or MemoryError on deep nesting, and
    ValueError on text that is not source (null bytes, lone surrogates)."""
    try:
        yield
    except SyntaxError as exc:
        where = f" at line {exc.lineno}" if exc.lineno else ""
        text = (exc.text or "").strip()
        line = f": {text[:SHOWN_LINE_CHARS]!r}" if text else ""
        raise JobError(f"{field_name} has a syntax error{where} ({exc.msg}){line}", field=field_name) from None
    except (RecursionError, MemoryError):
        raise JobError(f"{field_name} is nested too deeply to be parsed", field=field_name) from None
    except ValueError as exc:
        raise JobError(f"{field_name} cannot be parsed as Python source ({exc})", field=field_name) from None


# CPython 3.11's AST builder keeps its recursion depth in state shared by all threads; two
# parses at once (the API checks submissions in a thread pool) can fail with "SystemError:
# AST constructor recursion depth mismatch" (python/cpython#106905), seen as a 500 on
# POST /run when 20 jobs were submitted at once. So one parse at a time per process.
_PARSE_LOCK = threading.Lock()


def parse_code(source: str, field_name: str) -> ast.Module:
    with parse_failures_named(field_name), _PARSE_LOCK:
        return ast.parse(source, filename=f"<{field_name}>")


def _dotted(node: ast.AST) -> str:
    """`a.b.c` for a name or an attribute chain, else "" (a loop: chains can be long)."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    parts.append(node.id)
    return ".".join(reversed(parts))


def outline_signature(source: str, field_name: str = "signature_code") -> SignatureOutline:
    """The single Signature subclass the code defines, with its declared fields."""
    tree = parse_code(source, field_name)
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    signature_names: list[str] = []
    for node in classes.values():
        bases = [_dotted(base) for base in node.bases]
        if any(b.split(".")[-1] == "Signature" or b in signature_names for b in bases):
            signature_names.append(node.name)
    if not signature_names:
        raise JobError(
            f"{field_name} defines no dspy.Signature subclass; define exactly one, e.g. "
            "`class QA(dspy.Signature): question: str = dspy.InputField(); "
            "answer: str = dspy.OutputField()`",
            field=field_name,
        )
    if len(signature_names) > 1:
        raise JobError(
            f"{field_name} defines {len(signature_names)} dspy.Signature subclasses "
            f"({', '.join(signature_names)}); define exactly one",
            field=field_name,
        )
    node = classes[signature_names[0]]
    outline = SignatureOutline(name=node.name)
    outline.complete = all(_dotted(b).split(".")[-1] == "Signature" for b in node.bases)
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            name, call = stmt.target.id, stmt.value
        elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            name, call = stmt.targets[0].id, stmt.value
        else:
            continue
        kind = _FIELD_CALLS.get(_dotted(call.func).split(".")[-1]) if isinstance(call, ast.Call) else None
        if kind == "input":
            outline.input_fields.append(name)
        elif kind == "output":
            outline.output_fields.append(name)
    return outline


def find_metric_name(source: str, field_name: str = "metric_code") -> str:
    """`metric` if the code defines it, else its single top-level function."""
    tree = parse_code(source, field_name)
    functions: list[str] = []
    assigned: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions.append(node.name)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    assigned.add(target.id)
                    if isinstance(node.value, ast.Lambda):
                        functions.append(target.id)
    if "metric" in functions or "metric" in assigned:
        return "metric"
    if len(functions) == 1:
        return functions[0]
    if not functions:
        raise JobError(
            f"{field_name} defines no metric function; define "
            "`def metric(example, pred, trace=None): ...` returning a number",
            field=field_name,
        )
    raise JobError(
        f"{field_name} defines {len(functions)} functions ({', '.join(functions)}) and none "
        "is named `metric`; name the metric function `metric`",
        field=field_name,
    )


def check_fields_against_mapping(
    outline: SignatureOutline, inputs: dict[str, str], outputs: dict[str, str]
) -> None:
    """Mapped fields must exist on the signature, on the right side; inputs must be fed."""
    if not outline.complete:
        return
    sig_in, sig_out = set(outline.input_fields), set(outline.output_fields)
    for side, mapped, own, other in (("input", inputs, sig_in, sig_out), ("output", outputs, sig_out, sig_in)):
        for field_name in mapped:
            if field_name not in own:
                opposite = "output" if side == "input" else "input"
                where = f" (it is an {opposite} field)" if field_name in other else ""
                raise JobError(
                    f"column_mapping.{side}s.{field_name}: signature {outline.name} has no {side} "
                    f"field {field_name!r}{where}; its {side} fields are {sorted(own)}",
                    field="column_mapping",
                )
    unfed = sorted(sig_in - set(inputs))
    if unfed:
        raise JobError(
            f"column_mapping.inputs does not map signature input field(s) {unfed} of "
            f"{outline.name} to a dataset column",
            field="column_mapping",
        )


def check_columns_present(rows: list[dict], column_mapping_fields: dict[str, str]) -> None:
    """Every mapped column must be present in every dataset row."""
    wanted = set(column_mapping_fields.values())
    for index, row in enumerate(rows):
        missing = wanted - row.keys()
        if missing:
            raise JobError(
                f"dataset row {index} has no column(s) {sorted(missing)} named in "
                f"column_mapping; columns in that row: {sorted(row.keys())[:20]}",
                field="dataset",
            )
