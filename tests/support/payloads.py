"""Job request bodies for the local arithmetic task, shared by the engine and integration tests.

Pure builders: each returns a fresh dict that a test may change freely.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

from dspy_service.testing.local_lm import ARITHMETIC_METRIC_CODE, ARITHMETIC_SIGNATURE_CODE, make_arithmetic_dataset
from dspy_service.testing.local_lm.task import BASE_SKILL, difficulty, parse_question

SECRET_KEY = "sk-test-secret-9f8e7d6c5b4a"

# The job's task runs, in order, as the Prefect UI shows them.
STAGES = [
    "load-and-split-data",
    "build-language-models",
    "load-user-code",
    "compile-program",
    "evaluate-programs",
    "serialize-program-artifact",
]


def model_config(lm_url: str, name: str = "openai/local-arithmetic") -> dict[str, Any]:
    return {"name": name, "base_url": lm_url, "temperature": 0.0, "extra": {"api_key": SECRET_KEY}}


def tenant_model(lm_url: str, **extra: Any) -> dict[str, Any]:
    """A model config with a key of its own, so the job starts from a cold LM cache (the
    cache is per tenant) and really pays for, and waits on, every call."""
    config = model_config(lm_url)
    config["extra"] = {"api_key": f"sk-{uuid.uuid4().hex}", **extra}
    return config


def job_payload(lm_url: str, *, rows: int = 40, seed: int = 3, **overrides: Any) -> dict[str, Any]:
    """A POST /run body for the local arithmetic task."""
    payload: dict[str, Any] = {
        "username": "tester",
        "module_name": "predict",
        "signature_code": ARITHMETIC_SIGNATURE_CODE,
        "metric_code": ARITHMETIC_METRIC_CODE,
        "optimizer_name": "bootstrap",
        "optimizer_kwargs": {"max_bootstrapped_demos": 4, "max_labeled_demos": 0},
        "compile_kwargs": {},
        "dataset": make_arithmetic_dataset(rows, seed=seed),
        "column_mapping": {"inputs": {"question": "question"}, "outputs": {"answer": "answer"}},
        "split_fractions": {"train": 0.5, "val": 0.2, "test": 0.3},
        "shuffle": True,
        "seed": seed,
        "model_config": model_config(lm_url),
    }
    payload.update(copy.deepcopy(overrides))
    return payload


# The slower optimizers at light settings, for a ChainOfThought job each: (rows, optimizer_kwargs).
LIGHT_RUNS: dict[str, tuple[int, dict[str, Any]]] = {
    "miprov2": (40, {"auto": "light", "max_bootstrapped_demos": 2, "max_labeled_demos": 2}),
    "gepa": (30, {"auto": "light"}),
    "bootstrap_random_search": (
        40,
        {"num_candidate_programs": 2, "max_bootstrapped_demos": 2, "max_labeled_demos": 2},
    ),
}


def light_optimizer_payload(lm_url: str, optimizer: str, **optimizer_kwargs: Any) -> dict[str, Any]:
    """A ChainOfThought job running `optimizer` at its light settings (GEPA with its
    reflection model, `openai/local-reflection`); `optimizer_kwargs` add to the settings."""
    rows, kwargs = LIGHT_RUNS[optimizer]
    payload = job_payload(
        lm_url, rows=rows, module_name="cot", optimizer_name=optimizer, optimizer_kwargs={**kwargs, **optimizer_kwargs}
    )
    if optimizer == "gepa":
        payload["reflection_model_config"] = model_config(lm_url, name="openai/local-reflection")
    return payload


# A job whose test split is its last TEST_ROWS rows (no shuffling, split 0.5 / 0.2 / 0.3).
ROWS, TEST_ROWS = 40, 12
GRADER_ERROR = "the grader cannot read this example"


def metric_failing_on(questions: list[str]) -> str:
    """The arithmetic metric, raising (only when scoring, never while bootstrapping) on `questions`."""
    return (
        f"BAD = {sorted(questions)!r}\n"
        "def metric(example, pred, trace=None):\n"
        "    if trace is None and example.question in BAD:\n"
        f"        raise ValueError({GRADER_ERROR!r})\n"
        "    return str(pred.answer).strip() == str(example.answer).strip()\n"
    )


def payload_failing_on(lm_url: str, failing: int, **overrides: Any) -> dict[str, Any]:
    """A job whose metric raises on `failing` of its TEST_ROWS test examples."""
    payload = job_payload(lm_url, rows=ROWS, shuffle=False, **overrides)
    test_rows = payload["dataset"][-TEST_ROWS:]
    payload["metric_code"] = metric_failing_on([row["question"] for row in test_rows[:failing]])
    return payload


def payload_led_by(lm_url: str, *, easy: bool, count: int, **overrides: Any) -> dict[str, Any]:
    """An unshuffled job (40 rows: 20 train / 8 val / 12 test) whose train split starts with
    `count` questions the local LM's zero-shot answer gets right (`easy`) or wrong: under its
    skill model (dspy_service/testing/local_lm/task.py) each such call bootstraps a demo or not."""
    rows = make_arithmetic_dataset(40, seed=3)
    lead = [row for row in rows if (difficulty(parse_question(row["question"])) < BASE_SKILL) == easy][:count]
    return job_payload(lm_url, dataset=lead + [row for row in rows if row not in lead], shuffle=False, **overrides)
