"""Stage 4: build the student module and the optimizer, and compile inside dspy.context."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import dspy

from dspy_service.contract import Stage
from dspy_service.errors import JobError
from dspy_service.registry import LM_ARGUMENTS, OptimizerEntry, Parameters, get_registry
from dspy_service.schemas import JobSpec
from dspy_service.settings import get_settings
from tasks import stage
from tasks.budget import StopGEPAOnBudget, budget_in_force, install_optimizer_stops
from tasks.candidates import tracking_candidates
from tasks.data import DataSplits
from tasks.language_models import JobLMs
from tasks.optimizer_failure import (
    budget_ending,
    keeps_best_so_far,
    optimizer_error_details,
    unexplained_or_message,
)
from tasks.stopping import StopGEPAOnRequest
from tasks.user_code import UserCode

logger = logging.getLogger(__name__)

# Attributes optimizers leave on the program they return. They hold whole candidate
# programs (MIPROv2, random search) or GEPA's full search record: their scores go to
# optimization_metadata, the objects themselves are dropped before pickling.
OPTIMIZER_LEFTOVERS = (
    "trial_logs",
    "candidate_programs",
    "mb_candidate_programs",
    "detailed_results",
    "score",
    "total_calls",
    "prompt_model_total_calls",
)


COMPLETED = "completed"


@dataclass
class CompiledProgram:
    baseline: dspy.Module
    optimized: dspy.Module
    optimization_metadata: dict[str, Any] = field(default_factory=dict)
    compile_seconds: float = 0.0
    # How compile ended: {"termination_reason": "completed"}, or the optimizer_error the
    # job survived with its best candidate so far (tasks/optimizer_failure.py).
    termination: dict[str, Any] = field(default_factory=lambda: {"termination_reason": COMPLETED})


def build_student(spec: JobSpec, user_code: UserCode) -> dspy.Module:
    registry = get_registry()
    entry = registry.module(spec.module_name)
    registry.check_module_kwargs(entry, spec.module_kwargs)
    try:
        return entry.factory(user_code.signature, **spec.module_kwargs)
    except Exception as exc:
        raise JobError(
            f"module_name {spec.module_name!r} could not be built with module_kwargs "
            f"{spec.module_kwargs}: {type(exc).__name__}: {exc}",
            field="module_kwargs",
        ) from None


def optimizer_arguments(
    entry: OptimizerEntry, spec: JobSpec, splits: DataSplits, lms: JobLMs, metric: Any
) -> dict[str, Any]:
    """The constructor kwargs: the user's, the service-owned ones, and sane defaults."""
    registry = get_registry()
    kwargs = registry.optimizer_defaults(entry, splits.optimizer_kwargs)
    registry.check_optimizer_kwargs(entry, kwargs, splits.compile_kwargs, lm_roles=set(lms.by_role) - {"main"})
    params = entry.init_params
    if "num_threads" in params.names and kwargs.get("num_threads") is None:
        kwargs["num_threads"] = spec.num_threads or get_settings().num_threads
    if entry.uses_feedback_metric and "track_stats" in params.names:
        kwargs.setdefault("track_stats", True)  # keeps GEPA's per-candidate scores
    if "gepa_kwargs" in params.names:
        add_gepa_stop_callback(kwargs)
    for argument, role in LM_ARGUMENTS.items():
        if lms.get(role) is not None:
            kwargs[argument] = lms.get(role)
    if params.accepts("metric"):  # LabeledFewShot, for one, takes no metric
        kwargs["metric"] = metric
    return kwargs


def add_gepa_stop_callback(kwargs: dict[str, Any]) -> None:
    """GEPA ends its search at the next iteration boundary once the job is told to stop
    (cancel, time limit) or its budget is exhausted, keeping any stop callbacks the user gave."""
    gepa_kwargs = dict(kwargs.get("gepa_kwargs") or {})
    callbacks = gepa_kwargs.get("stop_callbacks")
    if callbacks is None:
        callbacks = []
    elif not isinstance(callbacks, (list, tuple)):
        callbacks = [callbacks]
    gepa_kwargs["stop_callbacks"] = [*callbacks, StopGEPAOnRequest(), StopGEPAOnBudget()]
    kwargs["gepa_kwargs"] = gepa_kwargs


def _jsonable(value: Any, depth: int = 0) -> Any:
    """Scores and counts from optimizer records; programs and other objects are dropped."""
    if depth > 6 or isinstance(value, dspy.Module):
        return None
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): v for k, v in ((k, _jsonable(v, depth + 1)) for k, v in value.items()) if v is not None}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value]
    return None


def _score_only(records: Any) -> list[Any]:
    out = []
    for record in records or []:
        if isinstance(record, dict):
            out.append({k: _jsonable(v) for k, v in record.items() if k != "program" and _jsonable(v) is not None})
        elif isinstance(record, (list, tuple)) and record and isinstance(record[0], (int, float)):
            out.append({"score": float(record[0])})
    return out


def _trajectory(points: list[tuple[int, float]]) -> list[dict[str, Any]]:
    """Scores in the order the optimizer found them, with the best so far: MIPROv2's
    full-evaluation trials (`step` = trial number, scores in its percent units) or GEPA's
    candidates (`step` = candidate index, validation-set mean)."""
    out, best = [], None
    for step, score in points:
        best = score if best is None else max(best, score)
        out.append({"step": step, "score": score, "best_so_far": best})
    return out


def optimizer_metadata(program: dspy.Module) -> dict[str, Any]:
    """Scores from the optimizer's leftovers, then remove those leftovers from the program."""
    meta: dict[str, Any] = {}
    state = vars(program)
    if isinstance(state.get("trial_logs"), dict):
        trials = []
        for number, log in sorted(state["trial_logs"].items(), key=lambda item: int(item[0])):
            score = log.get("full_eval_score", log.get("mb_score"))
            trials.append(
                {
                    "trial": int(number),
                    "score": _jsonable(score),
                    "full_eval": "full_eval_score" in log,
                    "total_eval_calls_so_far": _jsonable(log.get("total_eval_calls_so_far")),
                }
            )
        meta["trials"] = trials
        meta["score_trajectory"] = _trajectory(
            [(t["trial"], t["score"]) for t in trials if t["full_eval"] and isinstance(t["score"], (int, float))]
        )
    for name in ("candidate_programs", "mb_candidate_programs"):
        if state.get(name):
            meta[name.replace("programs", "scores")] = _score_only(state[name])
    results = state.get("detailed_results")
    if results is not None:
        gepa = {
            key: _jsonable(getattr(results, key, None))
            for key in ("val_aggregate_scores", "parents", "total_metric_calls", "num_full_val_evals",
                        "discovery_eval_counts", "best_idx")
        }
        meta["gepa"] = {k: v for k, v in gepa.items() if v is not None}
        scores = meta["gepa"].get("val_aggregate_scores") or []
        meta["score_trajectory"] = _trajectory(
            [(index, score) for index, score in enumerate(scores) if isinstance(score, (int, float))]
        )
    for name in ("score", "total_calls", "prompt_model_total_calls"):
        if _jsonable(state.get(name)) is not None:
            meta["best_score" if name == "score" else name] = _jsonable(state[name])
    for name in OPTIMIZER_LEFTOVERS:
        state.pop(name, None)
    return meta


@stage(Stage.COMPILE)
def compile_program(spec: JobSpec, splits: DataSplits, lms: JobLMs, user_code: UserCode) -> CompiledProgram:
    """Run the chosen optimizer on the train (and val) split, all inside dspy.context."""
    student = build_student(spec, user_code)
    baseline = student.deepcopy()
    if lms.budget is not None:
        lms.budget.reserve_evaluation(len(splits.test), len(student.predictors()))
    registry = get_registry()
    entry = registry.optimizer(spec.optimizer_name)
    metric = user_code.metric.with_mode(feedback=entry.uses_feedback_metric)
    init_kwargs = optimizer_arguments(entry, spec, splits, lms, metric)
    started = time.monotonic()
    # Optimizers such as MIPROv2 capture the LM at construction: build them in the context.
    with dspy.context(lm=lms.main):
        try:
            optimizer = entry.factory(**init_kwargs)
        except (TypeError, ValueError, AssertionError) as exc:
            raise JobError(
                f"optimizer {spec.optimizer_name!r} rejected optimizer_kwargs: {exc}", field="optimizer_kwargs"
            ) from None
        compile_params = Parameters.of(optimizer.compile)
        registry.check_compile_kwargs(entry, splits.compile_kwargs, compile_params)
        compile_kwargs = {**splits.compile_kwargs, "trainset": splits.train}
        if splits.val and entry.accepts_valset(compile_params):
            compile_kwargs["valset"] = splits.val
        optimized, termination = run_optimizer(optimizer, student, compile_kwargs, lms, metric)
    metric.raise_if_always_failing("optimization")
    if not isinstance(optimized, dspy.Module):
        raise JobError(f"optimizer {spec.optimizer_name!r} returned {type(optimized).__name__}, not a dspy.Module")
    return CompiledProgram(
        baseline=baseline,
        optimized=optimized,
        optimization_metadata=optimizer_metadata(optimized),
        compile_seconds=round(time.monotonic() - started, 3),
        termination=termination,
    )


def run_optimizer(
    optimizer: Any, student: dspy.Module, compile_kwargs: dict[str, Any], lms: JobLMs, metric: Any
) -> tuple[Any, dict[str, Any]]:
    """`optimizer.compile(...)` and how it ended; after an error or with its budget
    exhausted (tasks/budget.py), its best candidate so far."""
    install_optimizer_stops()
    with tracking_candidates() as tracker, budget_in_force(lms.budget):
        try:
            optimized = optimizer.compile(student, **compile_kwargs)
        except Exception as exc:
            if lms.budget is not None and lms.budget.exhausted:
                return budget_ending(type(optimizer).__name__, exc, None, student, tracker, lms)
            candidate = keeps_best_so_far(exc, tracker, lms.breaker.open)
            if candidate is None:
                unexplained_or_message(type(optimizer).__name__, exc, tracker, lms.secrets, metric)
            details = optimizer_error_details(exc, candidate, tracker, lms.secrets)
            logger.warning(
                "%s failed after scoring %d candidates; the job goes on with the best so far (score %s): %s",
                type(optimizer).__name__, tracker.evaluations, candidate.score, details["optimizer_error"],
            )
            return candidate.program, details
        if lms.budget is not None and lms.budget.exhausted:
            return budget_ending(type(optimizer).__name__, None, optimized, student, tracker, lms)
        return optimized, {"termination_reason": COMPLETED}
