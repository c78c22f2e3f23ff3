"""The toy arithmetic task the local LM "solves", and its deterministic skill model.

This is a test/demo fixture, not a model: whether an answer is right is decided by a
stable hash of the question and by how much help the prompt gives (few-shot demos and
cue phrases in the instructions). That makes prompt optimization *measurably* useful
against the local LM while every run stays reproducible:

    difficulty(q) = sha256("difficulty:" + canonical question) -> [0, 1)
    skill         = 0.30 + 0.12 * min(demos, 4) + (0.20 if the instructions contain a cue phrase)
                    capped at 0.95
    correct       <=> difficulty(q) < skill

A zero-shot Predict therefore scores ~30 %, one with 4 demos ~78 %, and a cue phrase
("step by step", "carefully", ...) in the instructions adds another 20 points.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

BASE_SKILL = 0.30
SKILL_PER_DEMO = 0.12
MAX_COUNTED_DEMOS = 4
CUE_BONUS = 0.20
MAX_SKILL = 0.95

# Matched case-insensitively against the instructions only (the signature's objective),
# never against DSPy's own boilerplate: JSONAdapter's format notes say "must exactly match",
# which would otherwise switch the bonus on for every JSON-mode prompt.
CUE_PHRASES = ("step by step", "carefully", "double-check", "double check", "exact")

# What MIPROv2 / COPRO proposers get back for an `*instruction*` output field. Half contain
# a cue phrase, so instruction search has something to find; none mention arithmetic, so
# they read sensibly for any task the local LM is pointed at.
INSTRUCTION_VARIANTS = (
    "Work through the problem step by step, then give only the final answer.",
    "Answer the question briefly.",
    "Read the question carefully and reply with the final result only.",
    "Respond with the answer to the question.",
    "Compute the exact result and reply with just that value.",
    "Give a short, direct answer.",
    "Double-check your work before giving the final answer.",
    "Provide the answer in a concise form.",
)

# What the GEPA reflection LM appends to the current instruction: always a cue phrase
# (reflection is supposed to help), worded so it reads sensibly for any task.
REFLECTION_SUFFIXES = (
    "Think step by step and give only the final answer.",
    "Read the input carefully and double-check the result before replying.",
    "Make sure the final answer is exact and contains nothing else.",
)

# "What is 37 + 45?", "37+45", "what is 12 * 7" - the whole field value, nothing else, so
# that proposer prompts quoting many examples are never mistaken for a question.
_QUESTION_RE = re.compile(r"^\s*(?:what\s+is\s+)?(-?\d{1,6})\s*([+\-*×])\s*(-?\d{1,6})\s*\??\s*$", re.IGNORECASE)

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def stable_unit(text: str, salt: str = "") -> float:
    """A number in [0, 1) from sha256: identical across processes (unlike hash())."""
    digest = hashlib.sha256(f"{salt}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def stable_index(text: str, n: int, salt: str = "") -> int:
    return int(stable_unit(text, salt) * n)


def has_cue(instructions: str) -> bool:
    lowered = instructions.lower()
    return any(cue in lowered for cue in CUE_PHRASES)


@dataclass(frozen=True)
class Question:
    a: int
    op: str
    b: int

    @property
    def text(self) -> str:
        """Canonical form: difficulty depends on the question, not on how a prompt spells it."""
        return f"{self.a} {self.op} {self.b}"

    @property
    def answer(self) -> int:
        return _OPS[self.op](self.a, self.b)


def parse_question(value: str) -> Question | None:
    match = _QUESTION_RE.match(value)
    if not match:
        return None
    op = "*" if match.group(2) == "×" else match.group(2)
    return Question(int(match.group(1)), op, int(match.group(3)))


def skill(n_demos: int, instructions: str) -> float:
    value = BASE_SKILL + SKILL_PER_DEMO * min(max(n_demos, 0), MAX_COUNTED_DEMOS)
    if has_cue(instructions):
        value += CUE_BONUS
    return min(value, MAX_SKILL)


def difficulty(question: Question) -> float:
    return stable_unit(question.text, "difficulty")


@dataclass(frozen=True)
class Attempt:
    question: Question
    given: int
    correct: bool

    @property
    def reasoning(self) -> str:
        # Consistent with the answer given, right or wrong, like a real model's rationale.
        return f"{self.question.text} = {self.given}."


def attempt(question: Question, n_demos: int, instructions: str) -> Attempt:
    """The local LM's answer: right iff the question is easier than the prompt's skill."""
    right = question.answer
    if difficulty(question) < skill(n_demos, instructions):
        return Attempt(question, right, True)
    # Off by 1..9, in a direction fixed per question: the same wrong answer every time.
    offset = 1 + stable_index(question.text, 9, "offset")
    sign = 1 if stable_unit(question.text, "sign") < 0.5 else -1
    return Attempt(question, right + sign * offset, False)


def make_arithmetic_dataset(n: int, seed: int = 0) -> list[dict]:
    """`n` distinct rows {"question": "What is 37 + 45?", "answer": "82"} (answer as a string)."""
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = random.Random(seed)
    rows: list[dict] = []
    seen: set[tuple[int, str, int]] = set()
    # Two-digit sums give ~19.5k distinct questions; big datasets get three-digit ones.
    top = 99 if n <= 5000 else 999
    if n > 2 * (top - 1) ** 2:
        raise ValueError(f"at most {2 * (top - 1) ** 2} distinct questions")
    while len(rows) < n:
        op = rng.choice("+-*")
        if op == "*":
            a, b = rng.randint(2, 12), rng.randint(2, 30)
        else:
            a, b = rng.randint(2, top), rng.randint(2, top)
        if (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        question = Question(a, op, b)
        rows.append({"question": f"What is {question.text}?", "answer": str(question.answer)})
    return rows


# Example user code for the service (tests and the offline demo submit these strings).
# The docstring deliberately contains no cue phrase: instruction search can add one.
ARITHMETIC_SIGNATURE_CODE = '''\
import dspy


class SolveArithmetic(dspy.Signature):
    """Answer the arithmetic question with a single integer."""

    question: str = dspy.InputField(desc="an arithmetic question such as 'What is 37 + 45?'")
    answer: str = dspy.OutputField(desc="the result as a bare integer, e.g. 82")
'''

ARITHMETIC_METRIC_CODE = '''\
def metric(example, pred, trace=None, pred_name=None, pred_trace=None):
    """1.0 for an exactly right answer, else 0.0 (the five-argument form also serves GEPA)."""
    return float(str(example.answer).strip() == str(pred.answer).strip())
'''
