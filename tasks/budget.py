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
inside MIPROv2 and random search) skips the examples left, an Optuna study (MIPROv2's,
or a user optimizer's) ends after the current trial, and every other LM call is refused
with `BudgetExhausted`, which fails its example in the evaluation it was part of (a
cut-short evaluation only underrates its candidate) or ends the optimizer's own loop.
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

import importlib
import importlib.abc
import importlib.util
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


def install_optimizer_stops() -> None:
    """Once per process: BootstrapFewShot (on its own and inside other optimizers) skips the
    examples left once the budget is exhausted, keeping the demos it has; an Optuna study
    (MIPROv2's trials, or a user optimizer's) ends after the trial in which it ran out."""
    from dspy.teleprompt.bootstrap import BootstrapFewShot

    original = BootstrapFewShot._bootstrap_one_example
    if not getattr(original, "__budget_hook__", False):

        def bootstrap_one_example(self: Any, example: Any, round_idx: int = 0) -> bool:
            if _compile_spent():
                return False
            return original(self, example, round_idx)

        bootstrap_one_example.__budget_hook__ = True  # type: ignore[attr-defined]
        BootstrapFewShot._bootstrap_one_example = bootstrap_one_example
    _install_trial_stop()


def _stop_study(study: Any, trial: Any) -> None:
    if _compile_spent():
        study.stop()


# The trial stop wraps `Study.optimize` of the module that defines Study. Importing Optuna
# costs a job ~0.25 s of CPU (bench/job_cpu.py), so a job that never imports it must never
# pay for it: when Optuna is not imported yet, a one-shot import hook wraps it right after
# that module runs, whoever imports it and whenever (MIPROv2's compile, a user optimizer's
# `import optuna` inside a function).
# How it fails: without Optuna installed no hook is registered (nothing to stop). If the
# module's import fails, the hook stays and tries again at the next import. After an
# `importlib.reload` of the module its new Study is wrapped by the next
# `install_optimizer_stops` (every job calls it). A study run before the stops are
# installed is not stopped early (its LM calls are still refused).
_STUDY_MODULE = "optuna.study.study"
_trial_stop_lock = threading.Lock()  # never held while importing (see _install_trial_stop)


def _install_trial_stop() -> None:
    """Wrap `Study.optimize` now if Optuna's study module is imported (or being imported in
    another thread), else register the import hook that wraps it once it is."""
    if _STUDY_MODULE not in sys.modules:
        if importlib.util.find_spec("optuna") is None:  # finds, never imports
            return
        _register_study_hook()
        # Another thread may have found the module before the hook was there: the hook is
        # registered first, then the module looked for, so one of the two sees it.
        if _STUDY_MODULE not in sys.modules:
            return
        _remove_study_hooks()
    # Waits for an import in progress in another thread, whose hook takes _trial_stop_lock
    # under that module's import lock: so this import must not hold _trial_stop_lock.
    _wrap_optimize(importlib.import_module(_STUDY_MODULE).Study)


def _wrap_optimize(study_class: type) -> None:
    with _trial_stop_lock:
        optimize = study_class.optimize
        if getattr(optimize, "__budget_hook__", False):
            return

        def optimize_within_budget(self: Any, func: Any, *args: Any, callbacks: Any = None, **kwargs: Any) -> None:
            return optimize(self, func, *args, callbacks=[*(callbacks or []), _stop_study], **kwargs)

        optimize_within_budget.__budget_hook__ = True  # type: ignore[attr-defined]
        study_class.optimize = optimize_within_budget


def _is_study_hook(finder: Any) -> bool:
    # By name, not class: a reloaded tasks.budget still recognises the hook it registered.
    return type(finder).__name__ == "_StudyImportHook"


class _StudyImportHook(importlib.abc.MetaPathFinder):
    """A `sys.meta_path` finder for Optuna's study module only: it finds the module with the
    other finders and hands back their spec with a loader that wraps `Study.optimize` once
    the module has run, then puts the original loader back and removes the hook."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != _STUDY_MODULE:
            return None
        for finder in list(sys.meta_path):
            find_spec = None if _is_study_hook(finder) else getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec else None
            if spec is not None:
                if hasattr(spec.loader, "exec_module"):
                    spec.loader = _WrapStudyLoader(spec.loader)
                return spec
        return None


class _WrapStudyLoader(importlib.abc.Loader):
    """Runs the module with the original loader (which the module sees as its own), then
    wraps its Study."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> Any:  # get_source, is_package, resources ...
        return getattr(self.loader, name)

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        _wrap_optimize(module.Study)
        _remove_study_hooks()


def _register_study_hook() -> None:
    with _trial_stop_lock:
        if not any(_is_study_hook(finder) for finder in sys.meta_path):
            sys.meta_path.insert(0, _StudyImportHook())


def _remove_study_hooks() -> None:
    with _trial_stop_lock:
        sys.meta_path[:] = [finder for finder in sys.meta_path if not _is_study_hook(finder)]
