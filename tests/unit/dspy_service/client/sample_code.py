"""Functions the payload tests send as code: inspect.getsource needs them in a file."""

import math
import re

import dspy

THRESHOLD = 0.5
PATTERN = re.compile(r"\d+")


def normalize(text):
    return str(text).strip().lower()


def metric(example, pred, trace=None):
    return float(normalize(example.answer) == normalize(pred.answer)) >= THRESHOLD and math.isfinite(1.0)


def exact_match(example, pred, trace=None):
    return float(normalize(example.answer) == normalize(pred.answer))


def uses_pattern(example, pred, trace=None):
    return bool(PATTERN.match(str(pred.answer)))


def make_closure(limit):
    def inner(example, pred, trace=None):
        return len(pred.answer) < limit

    return inner


class Arithmetic(dspy.Signature):
    """Answer the arithmetic question with a single integer."""

    question: str = dspy.InputField(desc="an arithmetic question")
    answer: str = dspy.OutputField(desc="the result as a bare integer")
