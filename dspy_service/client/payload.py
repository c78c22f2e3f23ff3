"""Real DSPy objects -> the POST /run body: a module's signature as code, a metric
function as code, examples as rows with a column mapping, a model as a model config.

How it fails: ValueError saying what to change, before anything is sent: a metric that
is a lambda, a closure, or uses a global that cannot travel as code; a signature field
whose type cannot be written as code; rows without a column a signature input needs; a
model of an unknown kind. A `dspy.LM`'s api key never goes into the body: `model_config`
names a credential instead (`credential_for` stores the key with POST /credentials).
"""

from __future__ import annotations

import builtins
import hashlib
import inspect
import json
import sys
import textwrap
import types
import typing
from collections.abc import Callable
from typing import Any

SIMPLE_TYPES = {
    str: "str",
    int: "int",
    float: "float",
    bool: "bool",
    dict: "dict",
    list: "list",
    typing.Any: "typing.Any",
}
CONSTANT_TYPES = (int, float, str, bool, bytes, type(None))
BUILTIN_MODULES = {"dspy.predict.predict.Predict": "predict", "dspy.predict.chain_of_thought.ChainOfThought": "cot"}


# ---- the signature ------------------------------------------------------------------------
def annotation_code(annotation: Any, field: str) -> str:
    """`annotation` written as Python code that runs where `dspy`, `typing` are imported."""
    if annotation in SIMPLE_TYPES:
        return SIMPLE_TYPES[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "typing.Literal[" + ", ".join(repr(a) for a in args) + "]"
    if origin in (list, dict, tuple, set) and args:
        return f"{origin.__name__}[" + ", ".join(annotation_code(a, field) for a in args) + "]"
    if origin in (typing.Union, types.UnionType):
        return "typing.Union[" + ", ".join(annotation_code(a, field) for a in args) + "]"
    if annotation is type(None):
        return "None"
    raise ValueError(
        f"signature field {field!r} has type {annotation!r}, which the client cannot send as code; "
        "use str, int, float, bool, list/dict of those or a Literal, or send `signature_code` yourself"
    )


def _field_kwargs(extra: dict[str, Any]) -> str:
    desc = extra.get("desc")  # DSPy writes "${name}" for a field without one
    return f"desc={desc!r}" if isinstance(desc, str) and desc and not desc.startswith("${") else ""


def signature_code(signature: type) -> str:
    """Code defining one `dspy.Signature` subclass equal to `signature` (fields, types,
    descriptions, instructions; DSPy ignores `prefix`). Generated, so it works for classes made in a notebook or
    from a string like "question -> answer"."""
    name = signature.__name__ if signature.__name__.isidentifier() else "JobSignature"
    lines = ["import typing", "", "import dspy", "", "", f"class {name}(dspy.Signature):"]
    lines.append(textwrap.indent(repr(signature.instructions or ""), "    "))
    for kind, fields in (("InputField", signature.input_fields), ("OutputField", signature.output_fields)):
        for field_name, info in fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            code = annotation_code(info.annotation, field_name)
            lines.append(f"    {field_name}: {code} = dspy.{kind}({_field_kwargs(extra)})")
    return "\n".join(lines) + "\n"


def program_parts(program: Any) -> tuple[str, dict[str, Any], type]:
    """(module_name, module_kwargs, signature class) of a DSPy module instance: Predict,
    ChainOfThought, or a module class registered by name (a plugin, see
    dspy_service/registry.py, loaded here too) whose first predictor holds the signature."""
    import dspy

    from dspy_service.registry import get_registry

    if not isinstance(program, dspy.Module):
        raise ValueError(
            f"program must be a dspy module instance such as dspy.Predict(MySig); got {type(program).__name__}"
        )
    kind = f"{type(program).__module__}.{type(program).__qualname__}"
    if kind.endswith("ChainOfThought") and kind in BUILTIN_MODULES:  # `reasoning` is prepended
        return BUILTIN_MODULES[kind], {}, program.predict.signature.delete("reasoning")
    if kind in BUILTIN_MODULES:
        return BUILTIN_MODULES[kind], {}, program.signature
    registered = get_registry().module_name_of(type(program))
    predictors = program.predictors()
    if registered is None or not predictors:
        raise ValueError(
            f"program is a {type(program).__name__}, which is neither dspy.Predict, dspy.ChainOfThought nor a "
            "module class registered by name (DSPY_SERVICE_PLUGINS); pass module_name=... and signature_code=... "
            "yourself"
        )
    return registered, {}, predictors[0].signature


# ---- the metric ---------------------------------------------------------------------------
def _global_code(name: str, value: Any, metric: str, own_module: str) -> str | None:
    """Code that defines global `name` as the function sees it: an import of an installed
    module's object; a constant; the source of a helper defined next to the function."""
    if isinstance(value, types.ModuleType):
        return f"import {value.__name__}" if value.__name__ == name else f"import {value.__name__} as {name}"
    home = getattr(value, "__module__", None)
    if home and home not in ("__main__", own_module) and getattr(sys.modules.get(home), name, None) is value:
        return f"from {home} import {name}"
    if isinstance(value, CONSTANT_TYPES) or (
        isinstance(value, (tuple, frozenset)) and all(isinstance(v, CONSTANT_TYPES) for v in value)
    ):
        return f"{name} = {value!r}"
    if isinstance(value, types.FunctionType):
        return function_code(value, what=f"{name} (used by {metric})")
    raise ValueError(
        f"{metric} uses the global {name!r} (a {type(value).__name__}), which cannot be sent as code; "
        "compute it inside the function or make it a constant"
    )


def function_code(func: Callable, what: str = "metric") -> str:
    """The source of `func` with what it uses from its globals (imports, constants, helpers)."""
    if not isinstance(func, types.FunctionType):
        raise ValueError(f"{what} must be a plain function defined with `def`; got {type(func).__name__}")
    if func.__name__ == "<lambda>":
        raise ValueError(f"{what} is a lambda; define it with `def metric(example, prediction, trace=None):`")
    if func.__code__.co_freevars:
        names = ", ".join(func.__code__.co_freevars)
        raise ValueError(
            f"{what} uses variables of an enclosing function ({names}); define it at the top level of a "
            "module or notebook cell and write those values inside it"
        )
    try:
        source = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError) as exc:
        raise ValueError(
            f"the source of {what} cannot be read ({exc}); define it in a file or a notebook cell"
        ) from None
    preamble = []
    for name in _global_names(func.__code__):
        if name in func.__globals__:
            line = _global_code(name, func.__globals__[name], what, func.__module__)
            if line:
                preamble.append(line)
        elif not hasattr(builtins, name):
            raise ValueError(f"{what} uses {name!r}, which is not defined")
    preamble = list(dict.fromkeys(preamble))
    imports = [line for line in preamble if line.startswith(("import ", "from "))]
    others = [line for line in preamble if line not in imports]
    return "\n\n".join(part for part in ("\n".join(imports), "\n".join(others), source) if part)


def _global_names(code: types.CodeType) -> list[str]:
    """Global names `code` (and the functions nested in it) loads, in order."""
    import dis

    names = [i.argval for i in dis.get_instructions(code) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")]
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.extend(_global_names(const))
    return list(dict.fromkeys(names))


def metric_code(metric: Callable) -> str:
    code = function_code(metric)
    return code if metric.__name__ == "metric" else code + f"\n\nmetric = {metric.__name__}\n"


# ---- the data -----------------------------------------------------------------------------
def as_rows(data: Any, what: str) -> list[dict[str, Any]]:
    """A list of dspy.Example, a pandas DataFrame or a list of dicts -> JSON-safe rows."""
    if hasattr(data, "to_json") and hasattr(data, "columns"):
        return json.loads(data.to_json(orient="records", date_format="iso"))
    rows = []
    for index, item in enumerate(data or []):
        if hasattr(item, "toDict"):
            item = item.toDict()
        if not isinstance(item, dict):
            raise ValueError(
                f"{what}[{index}] is a {type(item).__name__}; give dspy.Example objects, dicts or a DataFrame"
            )
        rows.append(json.loads(json.dumps(item, default=str)))
    if not rows:
        raise ValueError(f"{what} is empty")
    return rows


def column_mapping(signature: type, rows: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Signature field -> column of the same name; every input must be a column."""
    columns = set().union(*(row.keys() for row in rows))
    missing = [name for name in signature.input_fields if name not in columns]
    if missing:
        raise ValueError(
            f"the rows have no column for the signature input(s) {', '.join(missing)}; columns are "
            f"{', '.join(sorted(columns))} (rename them, or pass column_mapping=...)"
        )
    return {
        "inputs": {name: name for name in signature.input_fields},
        "outputs": {name: name for name in signature.output_fields if name in columns},
    }


def split_rows(
    trainset: list[dict[str, Any]], valset: list[dict[str, Any]] | None, testset: list[dict[str, Any]] | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All rows and the split fields that make the service split them exactly as given:
    train, then val, then test, in order and unshuffled."""
    val, test = valset or [], testset or []
    rows = trainset + val + test
    total = len(rows)
    return rows, {
        "split_fractions": {"train": len(trainset) / total, "val": len(val) / total, "test": len(test) / total},
        "shuffle": False,
    }


# ---- the model ----------------------------------------------------------------------------
MODEL_KWARGS = ("temperature", "max_tokens", "top_p")


def credential_name(api_key: str, base_url: str | None) -> str:
    digest = hashlib.sha256(f"{base_url or ''}\0{api_key}".encode()).hexdigest()[:16]
    return f"lm-{digest}"


def model_config(model: Any, store_key: Callable[[str, str], None]) -> dict[str, Any]:
    """A model id, a config dict or a `dspy.LM` -> a `model_config`. `store_key(name, key)`
    keeps an LM's api key as the caller's credential `name`."""
    if isinstance(model, str):
        return {"name": model}
    if isinstance(model, dict):
        return dict(model)
    if hasattr(model, "model") and isinstance(getattr(model, "kwargs", None), dict):
        kwargs = dict(model.kwargs)
        api_key = kwargs.pop("api_key", None)
        base_url = kwargs.pop("api_base", None) or kwargs.pop("base_url", None)
        config: dict[str, Any] = {"name": model.model}
        if base_url:
            config["base_url"] = base_url
        for key in MODEL_KWARGS:
            if kwargs.get(key) is not None:
                config[key] = kwargs.pop(key)
        kwargs = {k: v for k, v in kwargs.items() if v is not None and k not in ("headers", "extra_headers")}
        if getattr(model, "model_type", "chat") != "chat":
            kwargs["model_type"] = model.model_type
        if kwargs:
            config["extra"] = kwargs
        if api_key:
            name = credential_name(str(api_key), base_url)
            store_key(name, str(api_key))
            config["credential"] = name
        return config
    raise ValueError(f"model must be a LiteLLM model id, a dspy.LM or a model_config dict; got {type(model).__name__}")


def optimize_body(
    program: Any,
    metric: Callable,
    trainset: Any,
    *,
    store_key: Callable[[str, str], None],
    optimizer: str,
    optimizer_kwargs: dict[str, Any] | None,
    valset: Any,
    testset: Any,
    model: Any,
    reflection_model: Any,
    split: dict[str, float] | None,
    seed: int | None,
    name: str | None,
    raw: dict[str, Any],
) -> dict[str, Any]:
    """The POST /run body of `Client.optimize` (see there); `raw` contract fields win."""
    if model is None and "model_config" not in raw:
        raise ValueError("model is required: a LiteLLM model id, a dspy.LM or a model_config dict")
    module_name, module_kwargs, signature = program_parts(program)
    train_rows = as_rows(trainset, "trainset")
    body: dict[str, Any] = {
        "module_name": module_name,
        "module_kwargs": module_kwargs,
        "signature_code": signature_code(signature),
        "metric_code": metric_code(metric),
        "optimizer_name": optimizer,
        "optimizer_kwargs": dict(optimizer_kwargs or {}),
    }
    if valset is not None or testset is not None:
        if split is not None:
            raise ValueError("give either split=... or valset/testset, not both")
        val_rows = as_rows(valset, "valset") if valset is not None else None
        test_rows = as_rows(testset, "testset") if testset is not None else None
        rows, split_fields = split_rows(train_rows, val_rows, test_rows)
        body.update(split_fields)
    else:
        rows = train_rows
        if split is not None:
            body["split_fractions"] = dict(split)
    body["dataset"] = rows
    body["column_mapping"] = column_mapping(signature, rows)
    if model is not None:
        body["model_config"] = model_config(model, store_key)
    if reflection_model is not None:
        body["reflection_model_config"] = model_config(reflection_model, store_key)
    if seed is not None:
        body["seed"] = seed
    if name is not None:
        body["name"] = name
    return {**body, **raw}
