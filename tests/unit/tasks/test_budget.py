"""BudgetGuard: what it admits, refuses and reports (tasks/budget.py), on a real UsageMeter."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dspy_service.budget import Budget
from dspy_service.errors import JobError
from dspy_service.lm_usage import UsageMeter, requests_asked
from tasks.budget import BudgetExhausted, BudgetGuard, StopGEPAOnBudget, budget_in_force, install_optimizer_stops


def answered(meter: UsageMeter, tokens: int = 100, cost: float = 0.01, role: str = "main") -> None:
    meter.record(role, {"usage": {"prompt_tokens": tokens - 10, "completion_tokens": 10}, "cost": cost})


def call(guard: BudgetGuard, meter: UsageMeter, **usage) -> None:
    guard.admit()
    answered(meter, **usage)
    guard.release()


def test_calls_in_flight_count_so_the_call_limit_is_never_exceeded():
    meter = UsageMeter()
    guard = BudgetGuard(Budget(max_lm_calls=3), meter)
    call(guard, meter)
    guard.admit()
    guard.admit()  # two in flight: 1 + 2 = 3
    with pytest.raises(BudgetExhausted):
        guard.admit()
    assert guard.exhausted and guard.refused == {"compile-program": 1}
    assert guard.max_in_flight == 2


def test_an_answer_from_the_cache_is_not_counted():
    meter = UsageMeter()
    guard = BudgetGuard(Budget(max_lm_calls=1), meter)
    guard.admit()
    meter.record("main", {"usage": {}})  # DSPy reports a cache hit with empty usage
    guard.release()
    call(guard, meter)
    assert guard.used()["lm_calls"] == 1 and not guard.exhausted


def test_tokens_and_cost_assume_the_next_call_is_an_average_one():
    meter = UsageMeter()
    guard = BudgetGuard(Budget(max_tokens=250), meter)
    call(guard, meter, tokens=100)
    guard.admit()  # 100 used + 1 × 100 ≤ 250
    with pytest.raises(BudgetExhausted, match="max_tokens"):
        guard.admit()  # 100 + 2 × 100 > 250
    cost_guard = BudgetGuard(Budget(max_cost_usd=0.025), UsageMeter())
    call(cost_guard, cost_guard.meter, cost=0.01)
    with pytest.raises(BudgetExhausted, match="max_cost_usd"):
        call(cost_guard, cost_guard.meter, cost=0.01)
        call(cost_guard, cost_guard.meter, cost=0.01)


def test_compile_leaves_the_evaluation_its_reserve_and_stays_stopped():
    meter = UsageMeter()
    guard = BudgetGuard(Budget(max_lm_calls=10), meter)
    guard.reserve_evaluation(test_examples=3, predictors=1)  # 6 calls
    for _ in range(4):
        call(guard, meter)
    assert guard.limit_reached() == "max_lm_calls"
    with pytest.raises(BudgetExhausted):
        guard.admit()
    guard.start_evaluation()
    for _ in range(6):
        call(guard, meter)
    with pytest.raises(BudgetExhausted):
        guard.admit()
    with pytest.raises(JobError, match="1 LM calls were refused; used 10 of 10 LM calls"):
        guard.raise_if_evaluation_refused()
    guard.lift()
    call(guard, meter)  # what follows the evaluation is measured, not limited
    details = guard.as_details()
    assert details["limits"] == {"max_lm_calls": 10}
    assert details["used"]["lm_calls"] == 10 and details["overshoot"] == {"max_lm_calls": 0}
    assert details["refused_calls"] == 2 and details["exhausted_in"] == "compile-program"


def test_the_evaluation_reserve_costs_the_average_main_model_call():
    guard = BudgetGuard(Budget(max_tokens=1000), UsageMeter())
    guard.reserve_evaluation(test_examples=2, predictors=1)  # 4 calls, 100 tokens each so far
    for _ in range(5):
        call(guard, guard.meter, tokens=100)
    assert guard.limit_reached() is None  # 500 used + 100 next + 400 kept = 1000
    call(guard, guard.meter, tokens=100)
    assert guard.limit_reached() == "max_tokens"
    # A large reflection call adds to what is used, not to the evaluation's reserve.
    mixed = BudgetGuard(Budget(max_tokens=1200), UsageMeter())
    mixed.reserve_evaluation(test_examples=2, predictors=1)
    call(mixed, mixed.meter, tokens=100)
    call(mixed, mixed.meter, tokens=100)
    call(mixed, mixed.meter, tokens=400, role="reflection")
    assert mixed.limit_reached() is None  # 600 used + 200 (average call) + 4 × 100 = 1200


def test_no_room_for_optimizing_is_refused_before_any_call():
    guard = BudgetGuard(Budget(max_lm_calls=12), UsageMeter())
    with pytest.raises(JobError, match=r"the test evaluation alone needs 12 \(2 programs × 3 test examples × 2"):
        guard.reserve_evaluation(test_examples=3, predictors=2)


def test_the_gepa_stopper_follows_the_compile_in_force():
    meter = UsageMeter()
    guard = BudgetGuard(Budget(max_lm_calls=1), meter)
    stopper = StopGEPAOnBudget()
    with budget_in_force(guard):
        assert stopper(None) is False
        call(guard, meter)
        assert stopper(None) is True
    assert stopper(None) is False  # no compile in force


def test_progress_names_every_count_and_its_limit():
    meter = UsageMeter()
    guard = BudgetGuard(Budget(max_lm_calls=5, max_cost_usd=0.5), meter)
    call(guard, meter, tokens=13, cost=0.001)
    assert guard.progress() == "used 1 of 5 LM calls, 13 tokens, $0.001 of $0.5"


def test_an_optuna_study_ends_after_the_trial_that_spent_the_budget():
    import optuna

    install_optimizer_stops()
    meter = UsageMeter()
    guard = BudgetGuard(Budget(max_lm_calls=2), meter)
    trials = []

    def objective(trial):
        call(guard, meter)  # one LM call per trial
        trials.append(trial.number)
        return 1.0

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with budget_in_force(guard):
        optuna.create_study().optimize(objective, n_trials=5)
    assert trials == [0, 1]
    optuna.create_study().optimize(lambda trial: 1.0, n_trials=3)  # no budget in force: all trials


def test_a_call_for_several_completions_is_admitted_and_counted_as_its_requests():
    meter = UsageMeter()
    guard = BudgetGuard(Budget(max_lm_calls=4), meter)
    with pytest.raises(BudgetExhausted):
        guard.admit(requests_asked({"n": 1}, {"n": 5}))  # 5 requests cannot fit in 4
    guard.exhausted_in = None
    requests = requests_asked({"n": 3}, {})  # the LM's own n
    guard.admit(requests)
    assert guard.in_flight == 3
    # DSPy's native engine answers n completions with n responses, one request each.
    meter.record("main", {"usage": {"prompt_tokens": 30, "completion_tokens": 6}, "response": ("a", "b", "c")})
    guard.release(requests)
    assert guard.used()["lm_calls"] == 3 and guard.in_flight == 0
    meter.record("main", {"usage": {"prompt_tokens": 10, "completion_tokens": 2}, "response": object()})
    assert guard.used()["lm_calls"] == 4  # one request asking for n choices (the LiteLLM path)
    assert requests_asked({}, {"n": None}) == requests_asked({"n": True}, {}) == 1


def test_the_details_say_where_the_budget_came_from():
    assert BudgetGuard(Budget(max_lm_calls=5), UsageMeter()).as_details()["source"] == "job"
    guard = BudgetGuard(Budget(max_lm_calls=5), UsageMeter(), source="user_default")
    assert guard.as_details()["source"] == "user_default"


def fresh_interpreter(code: str, path: str = "") -> list[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [path, os.getcwd()]))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()


EXHAUSTED = """
from dspy_service.budget import Budget
from dspy_service.lm_usage import UsageMeter
from tasks.budget import BudgetGuard
meter = UsageMeter()
guard = BudgetGuard(Budget(max_lm_calls=1), meter)
guard.admit()
meter.record('main', {'usage': {'prompt_tokens': 9, 'completion_tokens': 1}})
guard.release()
"""

# A user-registered optimizer that imports Optuna only when it compiles.
USER_OPTIMIZER = """
import dspy


class TrialsOptimizer(dspy.teleprompt.Teleprompter):
    def compile(self, student, *, trainset=None, **kwargs):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study()
        study.optimize(lambda trial: 1.0, n_trials=5)
        student.trials = len(study.trials)
        return student
"""


def test_a_study_stops_on_the_budget_whoever_imports_optuna_and_a_job_without_one_never_imports_it(tmp_path):
    """Optuna costs a job ~0.25 s of CPU to import; BootstrapFewShot never needs it. A user
    optimizer that imports it inside its compile still has its study stopped."""
    (tmp_path / "user_optimizer.py").write_text(USER_OPTIMIZER)
    code = f"""
import sys, dspy
from tasks.budget import budget_in_force, install_optimizer_stops
install_optimizer_stops()  # a BootstrapFewShot job
dspy.BootstrapFewShot(metric=None)
print('optuna' in sys.modules)
from user_optimizer import TrialsOptimizer
install_optimizer_stops()  # the next job, and again: installed once
install_optimizer_stops()
{EXHAUSTED}
with budget_in_force(guard):
    print(TrialsOptimizer().compile(dspy.Predict('q -> a')).trials)
print(TrialsOptimizer().compile(dspy.Predict('q -> a')).trials)  # no budget in force
print([type(finder).__name__ for finder in sys.meta_path if 'Study' in type(finder).__name__])
import optuna.study.study as module
print(type(module.__loader__).__name__)
"""
    assert fresh_interpreter(code, str(tmp_path)) == ["False", "1", "5", "[]", "SourceFileLoader"]


def test_miprov2_s_studies_stop_on_the_budget():
    code = f"""
import dspy
from dspy.teleprompt import mipro_optimizer_v2
from tasks.budget import budget_in_force, install_optimizer_stops
lm = dspy.LM('openai/local', api_base='http://127.0.0.1:1/v1', api_key='x')
dspy.MIPROv2(metric=None, auto='light', prompt_model=lm, task_model=lm)
install_optimizer_stops()
optuna = mipro_optimizer_v2._import_optuna()  # what MIPROv2's compile runs
optuna.logging.set_verbosity(optuna.logging.WARNING)
{EXHAUSTED}
study = optuna.create_study()
with budget_in_force(guard):
    study.optimize(lambda trial: 1.0, n_trials=5)
print(len(study.trials))
"""
    assert fresh_interpreter(code) == ["1"]
