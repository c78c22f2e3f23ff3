"""Read a DSPy-formatted chat request back into fields, demos and instructions.

The local LM has no model, so it recovers the structure DSPy's adapters wrote into the
prompt (text as produced by dspy 3.4's ChatAdapter, JSONAdapter and XMLAdapter):

* system message: ``Your input fields are:`` / ``Your output fields are:`` with numbered
  entries ``1. `name` (type): desc``, then a format section in which every non-str output
  field carries a note ``{name}        # note: the value you produce must ...`` (inside a
  JSON object for JSONAdapter), then ``In adhering to this structure, your objective is:``
  followed by the signature's instructions;
* few-shot demos: prior user/assistant message pairs (all adapters share
  ``Adapter.format_demos``; none embeds demos inside one user message);
* the real input: the last user message, ``[[ ## field ## ]]`` sections (``<field>`` tags
  for XMLAdapter) followed by a ``Respond with ...`` reminder.

Anything else (no field list) is a free-form prompt, e.g. GEPA's reflection prompt.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_OBJECTIVE_MARK = "In adhering to this structure, your objective is:"
_INPUTS_HEADER = "Your input fields are:"
_OUTPUTS_HEADER = "Your output fields are:"
_STRUCTURE_MARK = "All interactions will be structured"
_JSON_OUTPUTS_MARK = "Outputs will be a JSON object with the following fields."
_ENTRY_RE = re.compile(r"^(\d+)\. `([^`]+)` \(")
_SECTION_RE = re.compile(r"^\[\[ ## (\w+) ## \]\]\s*$", re.MULTILINE)
_NOTE_PREFIX = "# note: the value you produce "


@dataclass(frozen=True)
class FieldSpec:
    """An output field as DSPy described it: its printed type and its format note."""

    name: str
    type_name: str  # e.g. "str", "int", "list[str]", "Literal['a', 'b']", "MyModel"
    note: str = ""  # e.g. "must be True or False", "must adhere to the JSON schema: {...}"


@dataclass
class PromptView:
    style: str  # "chat" | "json" | "xml" | "free"
    system: str
    last_user: str
    instructions: str
    n_demos: int
    input_fields: list[str] = field(default_factory=list)
    output_fields: list[FieldSpec] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)
    fingerprint: str = ""  # all message text: what "hash the prompt" hashes


def message_text(content: Any) -> str:
    """Text of an OpenAI message content: a string or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return str(content)


def _type_span(line: str, start: int) -> str:
    """The text up to the ')' closing the '(' before `start`, skipping brackets and quotes.

    Types such as ``Literal['a (b)', 'c']`` contain parentheses, so a regex cannot do it.
    """
    depth, quote, i = 0, "", start
    while i < len(line):
        ch = line[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            if depth == 0:
                return line[start:i]
            depth -= 1
        i += 1
    return line[start:]


def _field_entries(system: str, header: str) -> list[tuple[str, str]]:
    """(name, type) pairs of the numbered list under `header`, in order."""
    start = system.find(header)
    if start < 0:
        return []
    body = system[start + len(header) :]
    stops = [i for i in (body.find(_OUTPUTS_HEADER), body.find(_STRUCTURE_MARK)) if i >= 0]
    if stops:
        body = body[: min(stops)]
    entries: list[tuple[str, str]] = []
    for line in body.splitlines():
        match = _ENTRY_RE.match(line)
        # Descriptions can span lines; only the next number in sequence starts an entry.
        if match and int(match.group(1)) == len(entries) + 1:
            entries.append((match.group(2), _type_span(line, match.end()).strip()))
    return entries


def _format_notes(system: str, names: list[str]) -> dict[str, str]:
    """Each output field's note from the format section (JSON-decoded for JSONAdapter)."""
    texts = [system]
    mark = system.find(_JSON_OUTPUTS_MARK)
    if mark >= 0:
        brace = system.find("{", mark)
        try:
            obj, _ = json.JSONDecoder().raw_decode(system[brace:])
            if isinstance(obj, dict):
                texts.extend(str(v) for v in obj.values())
        except (ValueError, json.JSONDecodeError):
            pass
    notes: dict[str, str] = {}
    for name in names:
        pattern = re.compile(r"^\s*\{" + re.escape(name) + r"\}\s+" + re.escape(_NOTE_PREFIX) + r"(.*)$", re.MULTILINE)
        for text in texts:
            match = pattern.search(text)
            if match:
                notes[name] = match.group(1).strip()
                break
    return notes


def _instructions(system: str) -> str:
    """The signature's instructions; the whole system message if DSPy's marker is absent."""
    at = system.find(_OBJECTIVE_MARK)
    if at < 0:
        return system
    tail = system[at + len(_OBJECTIVE_MARK) :]
    return "\n".join(line.strip() for line in tail.splitlines()).strip()


def _strip_reminder(value: str) -> str:
    # The last input section runs into the adapter's "Respond with ..." reminder.
    cut = value.find("\n\nRespond with ")
    return (value[:cut] if cut >= 0 else value).strip()


def _input_values(user: str, names: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    headers = list(_SECTION_RE.finditer(user))
    for i, match in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(user)
        values.setdefault(match.group(1), _strip_reminder(user[match.end() : end]))
    if not headers:  # XMLAdapter: <name>\nvalue\n</name>
        for name in names:
            match = re.search(rf"<{re.escape(name)}>(.*?)</{re.escape(name)}>", user, re.DOTALL)
            if match:
                values[name] = match.group(1).strip()
    return values


def _style(system: str, user: str, response_format: Any, has_fields: bool) -> str:
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind in ("json_object", "json_schema") or _JSON_OUTPUTS_MARK in system or "Respond with a JSON object" in user:
        return "json"
    if "wrapped in XML tags" in user:
        return "xml"
    return "chat" if has_fields else "free"


def read_prompt(messages: list[dict], response_format: Any = None) -> PromptView:
    texts = [(str(m.get("role", "")), message_text(m.get("content"))) for m in messages if isinstance(m, dict)]
    system = "\n\n".join(text for role, text in texts if role in ("system", "developer"))
    last_user_at = max((i for i, (role, _) in enumerate(texts) if role == "user"), default=len(texts))
    last_user = texts[last_user_at][1] if last_user_at < len(texts) else ""
    # Few-shot demos (and dspy.History turns) are the assistant turns before the real input.
    n_demos = sum(1 for role, _ in texts[:last_user_at] if role == "assistant")
    inputs = [name for name, _ in _field_entries(system, _INPUTS_HEADER)]
    entries = _field_entries(system, _OUTPUTS_HEADER)
    notes = _format_notes(system, [name for name, _ in entries])
    outputs = [FieldSpec(name, type_name, notes.get(name, "")) for name, type_name in entries]
    return PromptView(
        style=_style(system, last_user, response_format, bool(outputs)),
        system=system,
        last_user=last_user,
        instructions=_instructions(system),
        n_demos=n_demos,
        input_fields=inputs,
        output_fields=outputs,
        inputs=_input_values(last_user, inputs),
        fingerprint="\n".join(f"{role}: {text}" for role, text in texts),
    )
