"""Compose the local LM's reply: a well-formed value for every output field, deterministically.

Which path a request takes:

1. an output field named ``*instruction*`` -> an instruction:
   * GEPA's ``ProposeInstruction`` (input ``current_instruction``; dspy 3.4 sends it as a
     structured JSONAdapter call, not gepa's plain prompt) -> the current instruction plus
     a cue sentence, so reflection helps;
   * GEPA's ``CompressInstruction`` (input ``instruction``) -> that instruction, unchanged;
   * MIPROv2's and COPRO's proposers -> one of ``INSTRUCTION_VARIANTS`` picked by hashing
     the prompt (half contain a cue phrase, so instruction search matters);
2. an arithmetic question as an input value -> the skill model in ``task.py`` answers the
   first output field that is not ``reasoning``; ``reasoning`` explains that answer;
3. every other field -> a placeholder of the right type, from DSPy's format note
   (JSON schema, Literal options, bool/int/float) or else from the printed type name;
4. no field list (a free-form prompt) -> for gepa's plain reflection prompt (``gepa.optimize``
   without DSPy's proposer) the current instruction plus a cue sentence in a ``` block,
   otherwise one short deterministic sentence.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from .prompts import FieldSpec, PromptView
from .task import INSTRUCTION_VARIANTS, REFLECTION_SUFFIXES, attempt, parse_question, stable_index, stable_unit

_TEXT_BY_NAME = {
    # MIPROv2's dataset summarizer and program/module describers.
    "observations": "The examples pair a short input with a short expected output; outputs are concise "
    "and follow one consistent format.",
    "summary": "A dataset of short inputs with concise, consistently formatted expected outputs.",
    "program_description": "The program calls a language model to map its input fields to its output fields.",
    "module_description": "This module predicts the output fields from the input fields in a single step.",
    "reasoning": "The answer follows directly from the inputs.",
}

_MAX_DEPTH = 6


# --------------------------------------------------------------------------- values


def _text_value(name: str, view: PromptView) -> str:
    if name == "observations" and "prior_observations" in view.input_fields:
        # The summarizer loops until it sees COMPLETE; saying so keeps MIPROv2 fast.
        return "COMPLETE"
    if name in _TEXT_BY_NAME:
        return _TEXT_BY_NAME[name]
    if "prefix" in name:
        return "Answer:"
    tag = f"{stable_index(view.fingerprint + name, 10**4, 'text'):04d}"
    return f"Placeholder {name.replace('_', ' ')} from the local test LM ({tag})."


def _from_schema(schema: Any, defs: dict, depth: int = 0) -> Any:
    """A small value valid under a JSON schema (the subset pydantic emits)."""
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return None
    if "$ref" in schema:
        target = defs.get(str(schema["$ref"]).rsplit("/", 1)[-1], {})
        return _from_schema(target, defs, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            options = [s for s in schema[key] if not (isinstance(s, dict) and s.get("type") == "null")]
            return _from_schema((options or schema[key])[0], defs, depth + 1)
    if schema.get("allOf"):
        return _from_schema(schema["allOf"][0], defs, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {name: _from_schema(sub, defs, depth + 1) for name, sub in props.items()}
    if kind == "array":
        if schema.get("prefixItems"):
            return [_from_schema(s, defs, depth + 1) for s in schema["prefixItems"]]
        count = max(int(schema.get("minItems", 1)), 0)
        if "maxItems" in schema:
            count = min(count, int(schema["maxItems"]))
        return [_from_schema(schema.get("items", {"type": "string"}), defs, depth + 1) for _ in range(count)]
    if kind in ("integer", "number"):
        return _number_for(schema, int if kind == "integer" else float)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _string_for(schema)


def _number_for(schema: dict, cast: type) -> int | float:
    step = 1 if cast is int else 0.5
    value = 1
    if "minimum" in schema:
        value = max(value, schema["minimum"])
    if "exclusiveMinimum" in schema:
        value = max(value, schema["exclusiveMinimum"] + step)
    if "maximum" in schema:
        value = min(value, schema["maximum"])
    if "exclusiveMaximum" in schema:
        value = min(value, schema["exclusiveMaximum"] - step)
    return cast(value)


def _string_for(schema: dict) -> str:
    formats = {
        "date-time": "2024-01-01T00:00:00Z",
        "date": "2024-01-01",
        "time": "00:00:00",
        "email": "user@example.com",
        "uri": "https://example.com",
        "uuid": "00000000-0000-4000-8000-000000000000",
    }
    text = formats.get(schema.get("format", ""), "text")
    return text.ljust(int(schema.get("minLength", 0)), "x")


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def _from_type_name(type_name: str, name: str, view: PromptView) -> Any:
    """Fallback when DSPy printed no note (str fields, XMLAdapter's nested types)."""
    base, _, rest = type_name.partition("[")
    inner = rest[:-1] if rest.endswith("]") else rest
    if base in ("str", "Reasoning", ""):
        return _text_value(name, view)
    if base == "int":
        return 1
    if base == "float":
        return 1.0
    if base == "bool":
        return True
    if base in ("list", "List", "set", "tuple"):
        args = _split_top_level(inner)
        return [_from_type_name(args[0], name, view)] if args and args[0] != "Any" else [_text_value(name, view)]
    if base in ("dict", "Dict"):
        return {}
    if base == "Literal":
        try:
            return ast.literal_eval(f"[{inner}]")[0]
        except (ValueError, SyntaxError, IndexError):
            return inner.split(",")[0].strip().strip("'\"")
    if base in ("Optional", "Union"):
        args = [a for a in _split_top_level(inner) if a not in ("NoneType", "None")]
        return _from_type_name(args[0], name, view) if args else None
    return {}  # a model/TypedDict name: best effort


def field_value(spec: FieldSpec, view: PromptView) -> Any:
    note = spec.note
    if note.startswith("must be True or False"):
        return True
    if note.startswith("must be a single int value"):
        return 1
    if note.startswith("must be a single float value"):
        return 1.0
    if note.startswith("must adhere to the JSON schema:"):
        raw = note[len("must adhere to the JSON schema:") :].strip()
        try:
            schema, _ = json.JSONDecoder().raw_decode(raw)
            return _from_schema(schema, schema.get("$defs", {}) if isinstance(schema, dict) else {})
        except ValueError:
            pass
    if "one of:" in note:
        if spec.type_name.startswith("Literal["):
            return _from_type_name(spec.type_name, spec.name, view)
        # Enums print their values; the first one is valid.
        return note.split("one of:", 1)[1].split(";")[0].strip()
    return _from_type_name(spec.type_name, spec.name, view)


# --------------------------------------------------------------------------- paths


def _numeric_kind(spec: FieldSpec) -> str:
    if spec.note.startswith("must be a single int value"):
        return "int"
    if spec.note.startswith("must be a single float value"):
        return "float"
    return "str" if spec.type_name in ("str", "") else ""


def _solve(view: PromptView, values: dict[str, Any]) -> None:
    """Answer an arithmetic question in place, if the prompt carries one."""
    target = next((f for f in view.output_fields if f.name != "reasoning"), None)
    if target is None or not _numeric_kind(target):
        return
    question = next((q for q in map(parse_question, view.inputs.values()) if q), None)
    if question is None:
        return
    result = attempt(question, view.n_demos, view.instructions)
    kind = _numeric_kind(target)
    values[target.name] = {"int": result.given, "float": float(result.given)}.get(kind, str(result.given))
    if "reasoning" in values:
        values["reasoning"] = result.reasoning


def _reflect(current: str, view: PromptView) -> str:
    """GEPA's reflection: keep the current instruction and add a cue sentence to it."""
    suffix = REFLECTION_SUFFIXES[stable_index(view.fingerprint, len(REFLECTION_SUFFIXES), "reflect")]
    return current if suffix in current else f"{current} {suffix}".strip()


def _instruction(view: PromptView) -> str:
    inputs = view.inputs
    if "current_instruction" in inputs:  # GEPA's ProposeInstruction (dspy 3.4 runs it via JSONAdapter)
        return _reflect(inputs["current_instruction"], view)
    if "instruction" in inputs:  # GEPA's CompressInstruction: hand the instruction back, within the limit
        limit = re.search(r"\d+", inputs.get("length_limit", ""))
        return inputs["instruction"][: int(limit.group())] if limit else inputs["instruction"]
    # MIPROv2's GenerateSingleModuleInstruction, COPRO's BasicGenerateInstruction & co.
    return INSTRUCTION_VARIANTS[stable_index(view.fingerprint, len(INSTRUCTION_VARIANTS), "instruction")]


def output_values(view: PromptView) -> dict[str, Any]:
    values = {spec.name: field_value(spec, view) for spec in view.output_fields}
    proposal = [s for s in view.output_fields if "instruction" in s.name.lower() and _numeric_kind(s) == "str"]
    if proposal:
        for spec in proposal:
            values[spec.name] = _instruction(view)
    else:
        _solve(view, values)
    return values


def _chat_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _xml(value: Any, tag: str) -> str:
    # Mirrors XMLAdapter._value_to_xml so nested lists/dicts parse back.
    if isinstance(value, list):
        return f"<{tag}>{''.join(_xml(item, 'item') for item in value)}</{tag}>"
    if isinstance(value, dict):
        return f"<{tag}>{''.join(_xml(v, str(k)) for k, v in value.items())}</{tag}>"
    text = _chat_text(value).replace("&", "&amp;").replace("<", "&lt;")
    return f"<{tag}>{text}</{tag}>"


_XML_SKELETONS_MARK = "Use this nested XML structure: "


def _xml_skeletons(user: str) -> dict[str, str]:
    """XMLAdapter's skeletons for nested fields, e.g. ``<item><qty>...</qty></item>``.

    The reminder joins one skeleton per field with spaces (a skeleton has none), and only
    the skeleton knows a model's field names; its leaves become "1", which pydantic's lax
    mode accepts as str, int, float and bool alike.
    """
    at = user.find(_XML_SKELETONS_MARK)
    if at < 0:
        return {}
    skeletons = {}
    for skeleton in user[at + len(_XML_SKELETONS_MARK) :].split():
        match = re.match(r"<(\w+)>", skeleton)
        if match and "><" in skeleton:
            skeletons[match.group(1)] = skeleton.replace("...", "1")
    return skeletons


def _holds_model(value: Any) -> bool:
    return isinstance(value, dict) or (isinstance(value, list) and bool(value) and isinstance(value[0], dict))


def render(style: str, values: dict[str, Any], view: PromptView | None = None) -> str:
    if style == "json":
        return json.dumps(values, ensure_ascii=False)
    if style == "xml":
        skeletons = _xml_skeletons(view.last_user) if view is not None else {}
        return "\n".join(
            skeletons.get(name, "") if _holds_model(value) and name in skeletons else _xml(value, name)
            for name, value in values.items()
        )
    sections = [f"[[ ## {name} ## ]]\n{_chat_text(value)}" for name, value in values.items()]
    return "\n\n".join([*sections, "[[ ## completed ## ]]"])


_FENCE_RE = re.compile(r"```[^\n]*\n(.*?)```", re.DOTALL)


def _free_form(view: PromptView) -> str:
    text = view.last_user or view.fingerprint
    lowered = text.lower()
    if "```" in text and "instruction" in lowered:
        # GEPA's reflection prompt quotes the current instruction in the first ``` block and
        # asks for a new one "within ``` blocks"; extend it with a cue phrase.
        match = _FENCE_RE.search(text)
        return f"```\n{_reflect(match.group(1).strip() if match else '', view)}\n```"
    return f"This is a deterministic reply from the local test LM (#{int(stable_unit(text, 'free') * 10**6):06d})."


def compose_reply(view: PromptView, response_format: Any = None) -> str:
    if view.output_fields:
        return render(view.style, output_values(view), view)
    schema = _response_schema(response_format)
    if schema is not None:
        return json.dumps(_from_schema(schema, schema.get("$defs", {})), ensure_ascii=False)
    if view.style == "json":
        return "{}"
    return _free_form(view)


def _response_schema(response_format: Any) -> dict | None:
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        return schema if isinstance(schema, dict) else None
    return None
