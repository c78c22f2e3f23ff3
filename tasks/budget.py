"""A job's hard budget (`budget`: max_lm_calls, max_tokens, max_cost_usd), enforced at its
metered LMs (tasks/language_models.py asks `BudgetGuard.admit` before every call).

What counts: every request the job's LMs send, all roles (main, reflection, prompt, task),
as the job's `usage` counts it: an LM call is one answered or failed request (its retries
are not counted again; a call for n completions that DSPy sends as n requests is n calls,
and is admitted only with room for all n); an answer from the cache costs nothing and is
not counted; tokens are prompt + completion tokens; cost is `usage.cost`.

When a call is refused: a call is admitted only if, counting the calls in flight and this
one, no limit would be exceeded. For calls that is exact: `max_lm_calls` is never exceeded.
Tokens and cost are known only once a call is answered, so the next call is assumed to
use the average of the calls so far; they can exceed their limit by what the calls in
flight (at most `num_threads`) use beyond that average. The result says the measured
overshoot. Once a call is refused (or the next one would be) the compile stage is
exhausted: GEPA stops at its next iteration (a stop callback), BootstrapFewShot (also
inside MIPROv2 and random search) skips the examples left, MIPROv2's Optuna study ends
after the current trial, and every other LM call is refused with `BudgetExhausted`, which
fails its example in the evaluation it was part of (a cut-short evaluation only underrates
its candidate) or ends the optimizer's own loop.
The job then goes on with the best candidate so far (tasks/compile.py), and ends with
`termination_reason: "budget_exhausted"`; with no candidate it fails saying how far it got.

The test evaluation is reserved before compile: 2 programs × test examples × the module's
predictors calls (a module that calls a predictor more than once per example, such as
ReAct, or a metric that calls the LM, needs more than that), and tokens and cost for those
calls at the average main-model call measured so far. Compile may use only what is left;
the evaluation may use the whole budget. A call the evaluation still cannot make is
refused: the job then fails naming the budget and keeps its compiled program. The
champion gate of a schedule's run (re-scoring the previous champion) is measured in
`usage` but not limited: refusing it would decide promotions on refused calls.

How it fails: `BudgetExhausted` (a RuntimeError, not counted as an LM error) from the LM
call; JobError with the how-far message from `reserve_evaluation`, `no_candidate` and
`raise_if_evaluation_refused`.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dspy_service.budget import JOB, Budget, check_room
from dspy_service.errors import JobError
from dspy_service.lm_usage import UsageMeter

BUDGET_EXHAUSTED = "budget_exhausted"
USED_NAMES = {"max_lm_calls": "lm_calls", "max_tokens": "tokens", "max_cost_usd": "cost_usd"}


class BudgetExhausted(RuntimeError):
    """Raised instead of an LM call the job's budget has no room for."""


class BudgetGuard:
    """Admission of a job's LM calls against its budget; one per job, shared by every copy
    of its LMs and every thread."""

    def __init__(self, budget: Budget, meter: UsageMeter, source: str = JOB) -> None:
        self.budget = budget
        self.meter = meter
        self.source = source  # the job's own budget or its owner's default (dspy_service/budget.py)
        self._lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.reserved_calls = 0
        self.stage = "compile-program"
        self.exhausted_in: str | None = None
        self.refused: dict[str, int] = {}
        self.limits_given = budget.limits()
        self.used_within: dict[str, float] | None = None  # what compile and evaluation used

    def __deepcopy__(self, memo: dict) -> BudgetGuard:  # DSPy copies LMs per thread
        return self

    def __reduce__(self):  # never pickled along with a program: LMs are stripped first
        return (BudgetGuard, (self.budget, UsageMeter()))

    # --- what is used and what is left ----------------------------------------------------
    def used(self) -> dict[str, float]:
        calls, tokens, cost = self.meter.counted()
        return {"lm_calls": calls, "tokens": tokens, "cost_usd": round(cost, 8)}

    def _reserve(self) -> dict[str, float]:
        """What the evaluation still needs (nothing once it has started)."""
        if not self.reserved_calls:
            return {"lm_calls": 0, "tokens": 0, "cost_usd": 0.0}
        calls, tokens, cost = self.meter.counted("main")
        calls = calls or 1
        return {
            "lm_calls": self.reserved_calls,
            "tokens": self.reserved_calls * tokens / calls,
            "cost_usd": self.reserved_calls * cost / calls,
        }

    def _over(self, extra_calls: int) -> str | None:
        """The first limit `extra_calls` more calls would exceed, or None."""
        used, reserve = self.used(), self._reserve()
        calls = used["lm_calls"] or 1
        for limit_name, value in self.budget.limits().items():
            name = USED_NAMES[limit_name]
            step = 1 if name == "lm_calls" else used[name] / calls
            if used[name] + extra_calls * step + reserve[name] > value:
                return limit_name
        return None

    # --- admission --------------------------------------------------------------------------
    def admit(self, requests: int = 1) -> None:
        """Count a call of `requests` requests (n completions may be n requests) in flight,
        or raise BudgetExhausted."""
        with self._lock:
            over = self.limit_reached(locked=True) or self._over(self.in_flight + requests)
            if over:
                self.refused[self.stage] = self.refused.get(self.stage, 0) + 1
                self.exhausted_in = self.exhausted_in or self.stage
                raise BudgetExhausted(f"the job's budget ({over}) has no room for another LM call")
            self.in_flight += requests
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def release(self, requests: int = 1) -> None:
        with self._lock:
            self.in_flight -= requests

    def limit_reached(self, locked: bool = False) -> str | None:
        """During compile: the limit that stops it (sticky once reached); the optimizers'
        loops ask this between steps."""
        if self.stage != "compile-program":
            return None
        if self.exhausted_in:
            return "budget"
        if locked:
            return None
        with self._lock:
            over = self._over(self.in_flight + 1)
            if over:
                self.exhausted_in = self.stage
            return over

    @property
    def exhausted(self) -> bool:
        return self.exhausted_in is not None

    # --- phases -----------------------------------------------------------------------------
    def reserve_evaluation(self, test_examples: int, predictors: int) -> None:
        """Keep the test evaluation's calls; JobError when that leaves compile nothing."""
        self.reserved_calls = check_room(self.budget, test_examples, predictors)

    def start_evaluation(self) -> None:
        with self._lock:
            self.reserved_calls = 0
            self.stage = "evaluate-programs"

    def lift(self) -> None:
        """After the evaluation: what follows (the champion gate) is measured, not limited."""
        with self._lock:
            self.used_within = self.used()
            self.stage = "after-evaluation"
            self.budget = Budget()

    # --- what the job says ------------------------------------------------------------------
    def progress(self) -> str:
        """"used 8 of 32 LM calls, 1411 tokens, $0 (24 LM calls kept for the test evaluation)"."""
        used, limits = self.used(), self.limits_given
        shown = {
            "max_lm_calls": (f"{used['lm_calls']:g}", "LM calls", ""),
            "max_tokens": (f"{used['tokens']:g}", "tokens", ""),
            "max_cost_usd": (f"${used['cost_usd']:.4g}", "", "$"),
        }
        parts = []
        for limit_name, (value, unit, sign) in shown.items():
            of = f" of {sign}{limits[limit_name]:g}" if limit_name in limits else ""
            parts.append(f"{value}{of} {unit}".rstrip())
        reserved = f" ({self.reserved_calls} LM calls kept for the test evaluation)" if self.reserved_calls else ""
        return "used " + ", ".join(parts) + reserved

    def no_candidate(self, optimizer: str, candidates: int) -> JobError:
        return JobError(
            f"the budget ran out during compile-program before {optimizer} had a candidate: "
            f"{self.progress()}; candidates scored: {candidates}. Raise the budget or lower the "
            "optimizer's own budget (trials, max_metric_calls, demos)",
            field="budget",
        )

    def raise_if_evaluation_refused(self) -> None:
        refused = self.refused.get("evaluate-programs", 0)
        if refused:
            raise JobError(
                f"the budget ran out during the test evaluation: {refused} LM calls were refused; "
                f"{self.progress()}. The compiled program is kept (GET /jobs/{{id}}/artifact); raise the "
                "budget (the evaluation needed more than its reserve)",
                field="budget",
            )

    def as_details(self) -> dict[str, Any]:
        """The budget and its source, what compile and evaluation used of it, and the measured
        overshoot."""
        limits, used = self.limits_given, self.used_within or self.used()
        return {
            "limits": limits,
            "source": self.source,
            "used": used,
            "overshoot": {name: max(0, round(used[USED_NAMES[name]] - value, 8)) for name, value in limits.items()},
            "exhausted": self.exhausted,
            "exhausted_in": self.exhausted_in,
            "refused_calls": sum(self.refused.values()),
            "max_calls_in_flight": self.max_in_flight,
        }


# The guard of the compile running in this process (one job per engine process; engine
# tests run their flows one after another), read by the optimizer hooks below.
_active: BudgetGuard | None = None


@contextmanager
def budget_in_force(guard: BudgetGuard | None) -> Iterator[None]:
    global _active
    previous, _active = _active, guard
    try:
        yield
    finally:
        _active = previous


def _compile_spent() -> bool:
    return _active is not None and _active.limit_reached() is not None


class StopGEPAOnBudget:
    """A GEPA `StopperProtocol`: True once the compile's budget is exhausted."""

    def __call__(self, gepa_state: Any) -> bool:
        return _compile_spent()


def install_optimizer_stops(optimizer: Any = None) -> None:
    """Once per process: BootstrapFewShot (on its own and inside other optimizers) skips the
    examples left once the budget is exhausted, keeping the demos it has; an Optuna study
    (MIPROv2's trials) ends after the trial in which it ran out, when `optimizer` (None:
    any) runs Optuna studies (`runs_optuna`)."""
    from dspy.teleprompt.bootstrap import BootstrapFewShot

    original = BootstrapFewShot._bootstrap_one_example
    if not getattr(original, "__budget_hook__", False):

        def bootstrap_one_example(self: Any, example: Any, round_idx: int = 0) -> bool:
            if _compile_spent():
                return False
            return original(self, example, round_idx)

        bootstrap_one_example.__budget_hook__ = True  # type: ignore[attr-defined]
        BootstrapFewShot._bootstrap_one_example = bootstrap_one_example
    if optimizer is None or runs_optuna(optimizer):
        _install_trial_stop()


def runs_optuna(optimizer: Any) -> bool:
    """Whether `optimizer` may run an Optuna study: Optuna is already imported, or a class of
    its MRO comes from a module that imports Optuna (DSPy's MIPROv2 and
    BootstrapFewShotWithOptuna define `_import_optuna`, called in their compile). Importing
    Optuna for the other optimizers cost a job ~0.25 s of CPU (bench/job_cpu.py)."""
    if "optuna" in sys.modules:
        return True
    for cls in type(optimizer).__mro__:
        module = sys.modules.get(cls.__module__)
        if module is not None and any("optuna" in name for name in vars(module)):
            return True
    return False


def _stop_study(study: Any, trial: Any) -> None:
    if _compile_spent():
        study.stop()


def _install_trial_stop() -> None:
    try:
        from optuna.study import Study
    except ImportError:  # no Optuna, no MIPROv2
        return
    optimize = Study.optimize
    if getattr(optimize, "__budget_hook__", False):
        return

    def optimize_within_budget(self: Any, func: Any, *args: Any, callbacks: Any = None, **kwargs: Any) -> None:
        return optimize(self, func, *args, callbacks=[*(callbacks or []), _stop_study], **kwargs)

    optimize_within_budget.__budget_hook__ = True  # type: ignore[attr-defined]
    Study.optimize = optimize_within_budget
