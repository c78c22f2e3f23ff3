"""How long a job's prompts and answers are, measured without running anything.

The signature's instructions, field names and descriptions come from its AST
(`signature_texts`, never executed); value lengths from the dataset's rows
(`column_lengths`). `program_call` adds them up the way DSPy's ChatAdapter lays out a
prompt (constants measured on dspy 3.4.1's ChatAdapter output): a system message with
the fields and the instructions, one user/assistant pair per demonstration, the inputs,
and an answer with one `[[ ## field ## ]]` section per output. Tokens are characters / 4.

How it fails: JobError naming `signature_code` for code the parser rejects (the API's
preflight has already rejected it by then).
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from typing import Any

from dspy_service.code_checks import outline_signature, parse_code
from dspy_service.optimizer_calls import Band

CHARS_PER_TOKEN = 4
SAMPLED_ROWS = 500  # rows whose lengths are measured (the first ones)
# ChatAdapter layout, in characters (measured on its output for 1-4 field signatures).
SYSTEM_BASE = 240  # headers, "All interactions will be structured...", the objective line
SYSTEM_PER_FIELD = 26  # plus 3 x the name and the description
USER_RESPOND_BASE = 125  # "Respond with the corresponding output fields, ..."
USER_RESPOND_PER_OUTPUT = 25  # plus the name
SECTION = 12  # "[[ ## name ## ]]\n" + "\n\n", plus the name and the value
DEMO_BASE = 26  # the user/assistant pair and its completed marker
COMPLETED_MARKER = 21
DEFAULT_INSTRUCTIONS = 40  # "Given the fields `a`, produce the fields `b`." plus the names
# Fields DSPy adds that no dataset column fills: what the model writes there.
REASONING_CHARS = Band(40, 300, 1500)
GENERATED_FIELD_CHARS = Band(10, 100, 600)
# ... and in a demo: a labeled demo has a placeholder there, a bootstrapped one the model's text.
DEMO_GENERATED_CHARS = Band(40, 100, 1500)


@dataclass
class SignatureTexts:
    instructions: str
    inputs: dict[str, str] = field(default_factory=dict)  # name -> description
    outputs: dict[str, str] = field(default_factory=dict)


def _desc(call: ast.expr | None) -> str:
    if not isinstance(call, ast.Call):
        return ""
    for keyword in call.keywords:
        if keyword.arg == "desc" and isinstance(keyword.value, ast.Constant) and isinstance(keyword.value.value, str):
            return keyword.value.value
    return ""


def signature_texts(source: str) -> SignatureTexts:
    """Instructions (the class docstring) and field descriptions (`desc=` string literals)."""
    outline = outline_signature(source)
    tree = parse_code(source, "signature_code")
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == outline.name)
    descriptions: dict[str, str] = {}
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            descriptions[stmt.target.id] = _desc(stmt.value)
        elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            descriptions[stmt.targets[0].id] = _desc(stmt.value)
    names = outline.input_fields + outline.output_fields
    default = DEFAULT_INSTRUCTIONS + sum(len(n) for n in names)
    instructions = ast.get_docstring(node) or "x" * default
    return SignatureTexts(
        instructions=instructions,
        inputs={n: descriptions.get(n, "") for n in outline.input_fields},
        outputs={n: descriptions.get(n, "") for n in outline.output_fields},
    )


def column_lengths(rows: list[dict[str, Any]], mapping: dict[str, str]) -> dict[str, Band]:
    """Field -> characters of its column's values (shortest, mean, longest) over the sampled rows."""
    sample = rows[:SAMPLED_ROWS]
    lengths: dict[str, Band] = {}
    for name, column in mapping.items():
        sizes = [len(str(row.get(column))) if row.get(column) is not None else 0 for row in sample]
        lengths[name] = Band(min(sizes), sum(sizes) / len(sizes), max(sizes)) if sizes else Band.exact(0)
    return lengths


@dataclass
class CallSize:
    prompt: Band  # characters
    completion: Band
    inputs: Band = Band.exact(0)  # the example's own input sections, within `prompt`

    def tokens(self) -> tuple[Band, Band]:
        return to_tokens(self.prompt), to_tokens(self.completion)


def to_tokens(chars: Band) -> Band:
    return Band(*(math.ceil(value / CHARS_PER_TOKEN) for value in (chars.low, chars.typical, chars.ceiling)))


def _section(name: str, value: Band) -> Band:
    return value + Band.exact(SECTION + len(name))


def program_call(
    texts: SignatureTexts, lengths: dict[str, Band], extra_outputs: tuple[str, ...], demos: Band
) -> CallSize:
    """One call of a predictor of the student program on one example, with `demos` demonstrations."""
    outputs = {**texts.outputs, **{name: "" for name in extra_outputs}}
    fields = {**texts.inputs, **outputs}
    system = SYSTEM_BASE + len(texts.instructions)
    system += sum(SYSTEM_PER_FIELD + 3 * len(name) + len(desc) for name, desc in fields.items())
    respond = USER_RESPOND_BASE + sum(USER_RESPOND_PER_OUTPUT + len(name) for name in outputs)
    inputs = Band.exact(0)
    for name in texts.inputs:
        inputs = inputs + _section(name, lengths.get(name, GENERATED_FIELD_CHARS))
    answer = Band.exact(COMPLETED_MARKER)
    for name in outputs:
        answer = answer + _section(name, lengths.get(name, REASONING_CHARS if name == "reasoning" else
                                                     GENERATED_FIELD_CHARS))
    demo = inputs + Band.exact(COMPLETED_MARKER + DEMO_BASE)
    for name in outputs:
        demo = demo + _section(name, lengths.get(name, DEMO_GENERATED_CHARS))
    prompt = Band.exact(system + respond) + inputs + demo * demos
    return CallSize(prompt=prompt, completion=answer, inputs=inputs)


# The optimizers' own prompts (templates measured on dspy 3.4.1, plus what they quote).
PROPOSAL_PROMPT = Band(1500, 3000, 6000)
PROPOSAL_COMPLETION = Band(200, 600, 2000)
REFLECTION_TEMPLATE = 1500
REFLECTION_COMPLETION = Band(300, 800, 2000)
FEEDBACK_CHARS = 200


def proposal_call(texts: SignatureTexts) -> CallSize:
    """An instruction proposal: a template quoting the signature and a few examples."""
    return CallSize(prompt=PROPOSAL_PROMPT + Band.exact(len(texts.instructions)), completion=PROPOSAL_COMPLETION)


def reflection_call(texts: SignatureTexts, example: CallSize, minibatch: int) -> CallSize:
    """GEPA's reflection: the current instruction and each minibatch example's inputs,
    outputs and feedback."""
    quoted = (example.inputs + example.completion + Band.exact(FEEDBACK_CHARS)) * minibatch
    return CallSize(prompt=quoted + Band.exact(REFLECTION_TEMPLATE + len(texts.instructions)),
                    completion=REFLECTION_COMPLETION)
