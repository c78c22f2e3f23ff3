"""An optimizer that raised: keep its best candidate so far, or say what it could not do.

The rule (issue #18, "nothing paid for is lost"): when the optimizer had scored a
candidate before it raised, the job goes on with that candidate and ends with
`termination_reason: "optimizer_error"` and the error. It does not when the job was told
to stop (a cancel is not an optimizer error), when the LM endpoint is unreachable (the
evaluation would fail the same way; the breaker's message says why), or on MemoryError.
Without a candidate, an answer the optimizer's models gave in the wrong format becomes a
message naming the phase and the fix; any other error is raised as it is, for the flow
to report with its LM error counts.

A compile whose budget ran out (tasks/budget.py) ends the same way with
`termination_reason: "budget_exhausted"`: with the program the optimizer returned when it
returned one that differs from the student, else its best whole-set candidate so far; with
neither, the job fails saying how much of the budget it used.
"""

from __future__ import annotations

import logging
from typing import Any

import dspy
from dspy.utils.exceptions import AdapterParseError

from dspy_service.error_causes import error_text, scrub
from dspy_service.errors import JobError
from tasks.budget import BUDGET_EXHAUSTED
from tasks.candidates import Candidate, CandidateTracker
from tasks.stopping import stop_requested

logger = logging.getLogger(__name__)

OPTIMIZER_ERROR = "optimizer_error"
ANSWER_CHARS = 80

# Output fields of the prompts an optimizer sends its own models, and what they are for.
# A field missing from the answer names the phase; the model it asks is the one to change.
PHASES: dict[str, tuple[str, str, str]] = {
    "proposed_instruction": ("propose instructions", "prompt model", "`prompt_model_config`"),  # MIPROv2, COPRO
    "program_description": ("describe the program", "prompt model", "`prompt_model_config`"),  # MIPROv2
    "module_description": ("describe the program", "prompt model", "`prompt_model_config`"),
    "observations": ("summarize the dataset", "prompt model", "`prompt_model_config`"),
    "summary": ("summarize the dataset", "prompt model", "`prompt_model_config`"),
}


def ends_the_job(exc: BaseException, breaker_open: bool) -> bool:
    """Whether `exc` is not the optimizer's own failure (a JobError, MemoryError, a stop
    asked for, an unreachable LM): then no candidate is kept, the job fails with it."""
    return isinstance(exc, (JobError, MemoryError)) or stop_requested() or breaker_open


def keeps_best_so_far(exc: BaseException, tracker: CandidateTracker, breaker_open: bool) -> Candidate | None:
    """The candidate the job goes on with after `exc`, or None (the job fails)."""
    return None if ends_the_job(exc, breaker_open) else tracker.best


def parse_failure_message(
    optimizer: str, exc: AdapterParseError, tracker: CandidateTracker, secrets: list[str]
) -> str:
    """"MIPROv2 could not propose instructions: the prompt model answered without the
    `proposed_instruction` field 6 of 6 times (it answered "I'm ready to assist…"); use a
    stronger `prompt_model_config`"."""
    fields = list(getattr(exc.signature, "output_fields", {}) or [])
    own_prompt = str(getattr(exc.signature, "__module__", "")).startswith("dspy.")  # not the user's signature
    phase, model, setting = next(
        (PHASES[name] for name in fields if own_prompt and name in PHASES),
        ("run the program", "model", "`model_config`, or fewer demos (`max_labeled_demos`)"),
    )
    counts = tracker.parse_counts(exc.signature)
    times = f" {counts.failures} of {counts.answers} times" if counts.answers else ""
    answer = scrub(" ".join(str(exc.lm_response or "").split()), secrets)  # before a cut splits a key
    if len(answer) > ANSWER_CHARS:
        answer = answer[:ANSWER_CHARS] + "…"
    named = ", ".join(f"`{name}`" for name in fields) or "expected"
    return (
        f"{optimizer} could not {phase}: the {model} answered without the {named} "
        f"field{'s' if len(fields) > 1 else ''}{times} (it answered {answer!r}); use a stronger {setting}"
    )


def optimizer_error_details(
    exc: BaseException, candidate: Candidate, tracker: CandidateTracker, secrets: list[str]
) -> dict[str, Any]:
    """What the result says about the error the job survived (scores in the optimizer's
    own units: DSPy's Evaluate reports percent)."""
    return {
        "termination_reason": OPTIMIZER_ERROR,
        "optimizer_error": scrub(error_text(exc), secrets)[:500],
        "best_so_far_score": candidate.score,
        "candidates_scored": tracker.evaluations,
    }


def unexplained_or_message(
    optimizer: str, exc: BaseException, tracker: CandidateTracker, secrets: list[str], metric: Any
) -> None:
    """Raise the failure of an optimizer that had no candidate, in a user's terms when we can:
    an unparsable answer, or the user's metric raising (DSPy's executor then only says
    "Execution cancelled due to errors or interruption")."""
    if isinstance(exc, JobError):
        raise exc
    if isinstance(exc, AdapterParseError):
        raise JobError(parse_failure_message(optimizer, exc, tracker, secrets)) from exc
    if getattr(metric, "failures", 0):
        raise JobError(
            f"{optimizer} failed: the metric raised on {metric.failures} of its {metric.calls} calls; "
            f"first failure: {metric.first_failure}",
            field="metric_code",
        ) from exc
    raise exc


def _changed(student: dspy.Module, program: Any) -> bool:
    """Whether the optimizer's program differs from the student (demos or instructions)."""

    def shape(module: Any) -> list[tuple[str, int]]:
        return [(str(p.signature.instructions), len(p.demos or [])) for p in module.predictors()]

    return isinstance(program, dspy.Module) and shape(program) != shape(student)


def budget_ending(
    optimizer: str, exc: BaseException | None, program: Any, student: dspy.Module, tracker: CandidateTracker,
    lms: Any,
) -> tuple[Any, dict[str, Any]]:
    """The program and termination details of a compile whose budget ran out (`exc`: what
    the optimizer raised, None when it returned `program`). A cancel, an unreachable LM or
    a JobError is not the budget's doing and is raised as it is."""
    if exc is not None and ends_the_job(exc, lms.breaker.open):
        raise exc
    if exc is not None or not _changed(student, program):
        program = tracker.best.program if tracker.best is not None else None
    if program is None:
        raise lms.budget.no_candidate(optimizer, tracker.evaluations) from exc
    best = tracker.best.score if tracker.best is not None else None
    logger.warning(
        "%s stopped: the job's budget is exhausted (%s); the job goes on with the best candidate so far "
        "(%d scored, best score %s)", optimizer, lms.budget.progress(), tracker.evaluations, best,
    )
    return program, {
        "termination_reason": BUDGET_EXHAUSTED,
        "best_so_far_score": best,
        "candidates_scored": tracker.evaluations,
    }
