"""Stage 7, for runs of a schedule only: the champion gate.

Each schedule keeps a champion (a Prefect Variable pointing at a job). A new run becomes
champion only if its optimized program beats the champion's program when BOTH are scored
on this run's test split with this run's metric and LM: scores from different test splits
(the data changes between runs) are not comparable, so the champion is re-evaluated here.
A global concurrency limit of one slot per schedule makes read-compare-write atomic when
runs of one schedule overlap. The champion's program is rebuilt from its JSON state and
this run's code (tasks/champion_program.py); a champion that cannot be loaded or scored
is replaced by this run, and the decision's reason says why.

A schedule with `register_as`: a promoted run is registered (tasks/champion_registration.py)
before the champion pointer moves, under the same lock; if registration fails, the run is
not promoted, so the champion and the alias stay together. The decision records
`registered` ({program, version, alias} or None) and `registered_reason`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import dspy
from prefect.concurrency.sync import concurrency
from prefect.variables import Variable

from dspy_service.contract import Stage, champion_lock, champion_variable, schedule_tag
from dspy_service.schemas import JobSpec
from dspy_service.settings import get_settings
from tasks import stage
from tasks.champion_program import load_champion_program
from tasks.champion_registration import RegistrationFailed, register_champion
from tasks.data import DataSplits
from tasks.evaluate import mean_metric
from tasks.language_models import JobLMs
from tasks.user_code import UserCode

logger = logging.getLogger("dspy_service.champion")

LOCK_TIMEOUT_SECONDS = 1800  # another run's gate holds the lock for one evaluation at most


@dataclass
class ChampionDecision:
    promoted: bool
    reason: str
    challenger_score: float | None  # this run's optimized_test_metric
    champion_score: float | None = None  # the previous champion, re-scored on this test split
    champion_job_id: str | None = None  # the previous champion
    champion_recorded_score: float | None = None  # its score on its own test split
    test_examples: int = 0
    # Schedules with `register_as`: the version this run became ({program, version, alias}), or
    # None and why not (tasks/champion_registration.py).
    registered: dict[str, Any] | None = None
    registered_reason: str | None = None

    def as_details(self) -> dict[str, Any]:
        return asdict(self)


def read_champion(schedule_id: str) -> dict[str, Any] | None:
    value = Variable.get(champion_variable(schedule_id), default=None)
    return value if isinstance(value, dict) and value.get("job_id") else None


def write_champion(schedule_id: str, job_id: str, score: float | None) -> None:
    value = {
        "job_id": job_id,
        "optimized_test_metric": score,
        "promoted_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    Variable.set(
        champion_variable(schedule_id), value, tags=["dspy-service", schedule_tag(schedule_id)], overwrite=True
    )


def register_promoted(decision: ChampionDecision, job_id: str, program: dict[str, Any]) -> None:
    """Register the promoted run (its schedule has `register_as`); when that fails, the
    run is not promoted either: the champion and the alias move together or not at all."""
    try:
        decision.registered, decision.registered_reason = register_champion(job_id, program)
    except RegistrationFailed as exc:
        decision.promoted = False
        decision.registered_reason = f"registration failed: {exc}"
        decision.reason = f"{decision.reason}; but it could not be registered ({exc}), so it is not promoted"


def decide(
    champion: dict[str, Any] | None,
    challenger_score: float | None,
    splits: DataSplits,
    lms: JobLMs,
    user_code: UserCode,
    load_program: Callable[[str], dspy.Module],
) -> ChampionDecision:
    """`load_program(job_id)` is the champion's program (see tasks/champion_program.py)."""
    decision = ChampionDecision(promoted=False, reason="", challenger_score=challenger_score,
                                test_examples=len(splits.test))
    if challenger_score is None:
        decision.reason = "this run has no test score (empty test split), so it cannot be compared"
        return decision
    if champion is None:
        decision.promoted = True
        decision.reason = "first successful run of the schedule"
        return decision
    decision.champion_job_id = champion["job_id"]
    decision.champion_recorded_score = champion.get("optimized_test_metric")
    try:
        program = load_program(champion["job_id"])
    except Exception as exc:  # noqa: BLE001 - a lost champion must not block the schedule
        decision.promoted = True
        decision.reason = f"the champion {champion['job_id']} could not be loaded ({exc}); this run replaces it"
        return decision
    try:
        with dspy.context(lm=lms.main):
            decision.champion_score = mean_metric(program, splits.test, user_code.metric, get_settings().num_threads)
    except Exception as exc:  # noqa: BLE001 - e.g. the metric raises on the champion's outputs
        decision.promoted = True
        decision.reason = f"the champion {champion['job_id']} could not be evaluated on this test split ({exc})"
        return decision
    if challenger_score > decision.champion_score:
        decision.promoted = True
        decision.reason = (
            f"beats the champion on this run's test split: {challenger_score:g} > {decision.champion_score:g}"
        )
    else:
        decision.reason = (
            f"does not beat the champion on this run's test split: {challenger_score:g} <= "
            f"{decision.champion_score:g}"
        )
    return decision


@stage(Stage.CHAMPION_GATE)
def champion_gate(
    schedule_id: str,
    job_id: str,
    challenger_score: float | None,
    splits: DataSplits,
    lms: JobLMs,
    spec: JobSpec,
    user_code: UserCode,
    program: dict[str, Any] | None = None,
) -> ChampionDecision:
    """Compare with the schedule's champion; record this run as champion if it wins.
    `program` (tasks/champion_registration.program_record): the schedule has `register_as`,
    so a promoted run is registered first, under the same lock."""
    load_program = partial(load_champion_program, schedule_id, spec=spec, user_code=user_code)
    decision: ChampionDecision | None = None
    try:
        with concurrency(champion_lock(schedule_id), occupy=1, timeout_seconds=LOCK_TIMEOUT_SECONDS):
            decision = decide(read_champion(schedule_id), challenger_score, splits, lms, user_code, load_program)
            if decision.promoted and program is not None:
                register_promoted(decision, job_id, program)
            elif program is not None:
                decision.registered_reason = "not promoted: nothing registered"
            if decision.promoted:
                write_champion(schedule_id, job_id, challenger_score)
    except Exception as exc:  # noqa: BLE001 - the optimization itself succeeded; keep its result
        logger.exception("champion gate failed")
        registered = decision.registered if decision is not None else None
        return ChampionDecision(
            promoted=False,
            reason=f"the champion gate failed ({type(exc).__name__}: {exc}); not promoted",
            challenger_score=challenger_score,
            test_examples=len(splits.test),
            registered=registered,  # registered before the champion pointer could be written
            registered_reason="registered, but the champion pointer was not written" if registered else None,
        )
    logger.info("champion gate: %s", decision.reason)
    if decision.registered_reason:
        logger.info("champion gate, register_as: %s", decision.registered_reason)
    return decision
