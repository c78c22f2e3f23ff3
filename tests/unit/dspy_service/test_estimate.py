"""POST /run/estimate's arithmetic: per optimizer (dspy 3.4.1's own formulas where DSPy
exposes them), prompt sizes against DSPy's real ChatAdapter, and the assembled estimate."""

from __future__ import annotations

import math
import random

import dspy
import pytest

from dspy_service.errors import JobError
from dspy_service.estimate import BASELINE, COMPILE, OPTIMIZED, STAGES, estimate_job, model_price
from dspy_service.optimizer_calls import (
    TYPICAL_PASS_RATE,
    Band,
    Shape,
    UnknownOptimizer,
    bootstrap_attempts,
    compile_work,
    gepa_budget,
    mipro_full_evaluations,
    optimized_demos,
    random_search_sizes,
)
from dspy_service.prompt_sizes import column_lengths, program_call, signature_texts
from dspy_service.schemas import JobRequest, ModelConfig
from dspy_service.testing.local_lm import ARITHMETIC_SIGNATURE_CODE
from tests.support.payloads import job_payload

LM_URL = "http://127.0.0.1:9/v1"


def calls(work, what: str | None = None) -> Band:
    total = Band.exact(0)
    for item in work:
        if what is None or item.what == what:
            total = total + item.calls
    return total


def test_bootstrap_stops_once_enough_traces_passed_and_tries_each_example_max_rounds_times():
    assert bootstrap_attempts(30, 4) == Band(4, 4 / TYPICAL_PASS_RATE, 30)
    assert bootstrap_attempts(30, 4, max_rounds=3).ceiling == 90
    assert bootstrap_attempts(5, 4).typical == 5  # the train split runs out first
    assert bootstrap_attempts(30, 0) == Band.exact(0)  # max_bootstrapped_demos=0 tries nothing
    work = compile_work("BootstrapFewShot", Shape(train=20, val=8, optimizer_kwargs={"max_bootstrapped_demos": 2}))
    assert calls(work) == Band(2, 4, 20)
    assert work[0].demos == Band.exact(16)  # the teacher carries max_labeled_demos labeled demos


def test_labeled_few_shot_makes_no_compile_call_and_its_program_carries_k_demos():
    assert compile_work("LabeledFewShot", Shape(train=30, val=5)) == []
    assert optimized_demos(Shape(train=30, val=5, optimizer_kwargs={"k": 3}), "LabeledFewShot") == Band.exact(3)
    assert optimized_demos(Shape(train=2, val=5), "LabeledFewShot") == Band.exact(2)


def test_random_search_scores_every_candidate_on_the_valset_and_draws_dspys_sizes():
    shape = Shape(train=20, val=8, optimizer_kwargs={"num_candidate_programs": 4, "max_bootstrapped_demos": 3})
    work = compile_work("BootstrapFewShotWithRandomSearch", shape)
    assert calls(work, "score each candidate on the validation set") == Band.exact((4 + 3) * 8)
    sizes = random_search_sizes(4, 3)
    assert sizes == [random.Random(seed).randint(1, 3) for seed in range(4)]
    bootstraps = calls(work, "bootstrap traces for each candidate")
    assert bootstraps.low == 3 + sum(sizes)
    assert bootstraps.ceiling == 20 * 5
    no_val = compile_work("BootstrapFewShotWithRandomSearch", Shape(train=20, val=0, optimizer_kwargs={
        "num_candidate_programs": 4}))
    assert calls(no_val, "score each candidate on the validation set") == Band.exact(7 * 20)  # valset = trainset


@pytest.mark.parametrize("auto", ["light", "medium", "heavy"])
@pytest.mark.parametrize("predictors", [1, 2])
def test_mipro_trials_are_dspys_own_number(auto, predictors):
    from dspy.teleprompt.mipro_optimizer_v2 import AUTO_RUN_SETTINGS

    class Program(dspy.Module):
        def __init__(self):
            super().__init__()
            self.steps = [dspy.Predict("q -> a") for _ in range(predictors)]

    optimizer = dspy.MIPROv2(metric=lambda *a: 1, auto=auto, prompt_model=dspy.LM("openai/x"),
                             task_model=dspy.LM("openai/x"))
    expected = optimizer._set_num_trials_from_num_candidates(Program(), False, AUTO_RUN_SETTINGS[auto]["n"])
    shape = Shape(train=40, val=20, predictors=predictors, optimizer_kwargs={"auto": auto})
    trials = calls(compile_work("MIPROv2", shape), "trials")
    assert trials == Band.exact(20 * (1 + expected))  # 20 val examples: no minibatching, each trial on all


def test_mipro_minibatches_above_50_val_examples_with_periodic_full_evaluations():
    # The trial numbers MIPROv2 runs its full evaluations at (trial_num 2..N+1).
    for trials, steps in ((10, 5), (9, 5), (20, 5), (3, 5), (12, 4)):
        adjusted = trials + trials // steps + 1 + (1 if trials % steps else 0)
        expected = [n for n in range(2, trials + 2) if n % (steps + 1) == 0 or n == adjusted - 1]
        assert mipro_full_evaluations(trials, steps) == len(expected)
    shape = Shape(train=200, val=80, optimizer_kwargs={"auto": "light"})
    full = mipro_full_evaluations(10, 5)
    assert calls(compile_work("MIPROv2", shape), "trials") == Band.exact(80 * (1 + full) + 35 * 10)


def test_mipro_without_auto_takes_num_candidates_and_num_trials_and_proposes_with_the_prompt_model():
    shape = Shape(train=30, val=10, optimizer_kwargs={"auto": None, "num_candidates": 4},
                  compile_kwargs={"num_trials": 7, "minibatch": False}, roles=frozenset({"main", "prompt"}))
    work = {item.what: item for item in compile_work("MIPROv2", shape)}
    assert work["trials"].calls == Band.exact(10 * 8)
    proposals = work["propose instructions"]
    assert proposals.role == "prompt"
    summary = 1 + len(range(10, 30, 10)) + 1
    assert proposals.calls == Band(2 + 4, summary + 3 * 4, summary + 3 * 4)


@pytest.mark.parametrize("auto", ["light", "medium", "heavy"])
@pytest.mark.parametrize("train,val", [(30, 12), (100, 0), (20, 60)])
def test_gepa_budget_is_dspys_auto_budget(auto, train, val):
    from dspy.teleprompt.gepa.gepa import AUTO_RUN_SETTINGS

    gepa = dspy.GEPA(metric=lambda *a: 1, auto=auto, reflection_lm=dspy.LM("openai/x"))
    expected = gepa.auto_budget(num_preds=1, num_candidates=AUTO_RUN_SETTINGS[auto]["n"], valset_size=val or train)
    assert gepa_budget(Shape(train=train, val=val, optimizer_kwargs={"auto": auto})) == expected


def test_gepa_spends_its_metric_call_budget_and_reflects_once_per_iteration():
    shape = Shape(train=30, val=10, optimizer_kwargs={"max_metric_calls": 100}, roles=frozenset({"main", "reflection"}))
    work = {item.what: item for item in compile_work("GEPA", shape)}
    program = work["evaluate candidates (metric calls)"].calls
    assert program.low == 100 and program.ceiling == 100 + 2 * 3 + 10  # one iteration past the budget
    reflections = work["reflect on minibatches"]
    assert reflections.role == "reflection"
    assert reflections.calls.low == 0 and reflections.calls.ceiling == math.ceil(90 / 6) + 1
    assert 0 < reflections.calls.typical < reflections.calls.ceiling
    assert gepa_budget(Shape(train=30, val=10, optimizer_kwargs={"max_full_evals": 2})) == 80


def test_copro_scores_breadth_candidates_per_depth_on_the_train_split():
    work = {i.what: i for i in compile_work("COPRO", Shape(train=12, val=3, optimizer_kwargs={"breadth": 4,
                                                                                            "depth": 2}))}
    assert work["score candidates on the train split"].calls == Band.exact(4 * 2 * 12)
    # 3 instructions, then 4 (one request each on DSPy's native engine); low: 1 request per call.
    assert work["propose instructions"].calls == Band(2, 3 + 4, 3 + 4)


def test_simba_samples_scores_and_validates_on_the_train_split():
    shape = Shape(train=40, val=0, optimizer_kwargs={"bsize": 10, "num_candidates": 3, "max_steps": 2})
    work = {i.what: i for i in compile_work("SIMBA", shape)}
    runs = work["sample trajectories and score candidates"].calls
    assert runs.low == 2 * 10 * 3 + 3 * 40  # trajectories + the final validation of 3 programs
    assert runs.ceiling == runs.low + 2 * 4 * 10  # + up to num_candidates+1 candidates per step


def test_an_optimizer_without_arithmetic_is_refused():
    with pytest.raises(UnknownOptimizer):
        compile_work("KNNFewShot", Shape(train=10, val=2))


def test_prompt_sizes_match_dspys_chat_adapter():
    """The layout constants, checked against the real adapter on a signature built here."""
    texts = signature_texts(ARITHMETIC_SIGNATURE_CODE)
    assert texts.instructions == "Answer the arithmetic question with a single integer."
    assert texts.inputs == {"question": "an arithmetic question such as 'What is 37 + 45?'"}
    row = {"question": "What is 12 + 30?", "answer": "42"}
    lengths = column_lengths([row], {"question": "question", "answer": "answer"})

    class SolveArithmetic(dspy.Signature):
        """Answer the arithmetic question with a single integer."""

        question: str = dspy.InputField(desc="an arithmetic question such as 'What is 37 + 45?'")
        answer: str = dspy.OutputField(desc="the result as a bare integer, e.g. 82")

    demo = dspy.Example(**row)
    for demos in (0, 3):
        inputs = {"question": row["question"]}
        messages = dspy.ChatAdapter().format(SolveArithmetic, demos=[demo] * demos, inputs=inputs)
        real = sum(len(m["content"]) for m in messages)
        estimated = program_call(texts, lengths, (), Band.exact(demos)).prompt.typical
        assert abs(estimated - real) <= 0.1 * real, (demos, estimated, real)


def request(**overrides) -> JobRequest:
    payload = job_payload(LM_URL, rows=60, **overrides)
    return JobRequest.model_validate(payload)


def test_the_estimate_adds_up_and_its_evaluations_are_the_test_split():
    job = request(module_name="cot", optimizer_name="miprov2", optimizer_kwargs={"auto": "light"})
    estimate = estimate_job(job.spec(), job.dataset)
    body = estimate.as_dict()
    assert body["split_counts"] == {"train": 30, "val": 12, "test": 18}
    assert body["stages"][BASELINE]["lm_calls"] == {"low": 18, "typical": 18, "ceiling": 18}
    assert body["stages"][OPTIMIZED]["lm_calls"]["typical"] == 18
    for key in ("lm_calls", "total_tokens"):
        for band in ("low", "typical", "ceiling"):
            parts = sum(body["stages"][stage][key][band] for stage in STAGES)
            assert abs(body["total"][key][band] - parts) <= len(STAGES)  # each part rounded
    compile_stage = body["stages"][COMPILE]
    assert {p["what"] for p in compile_stage["parts"]} == {"bootstrap demo candidate sets", "propose instructions",
                                                           "trials"}
    band = compile_stage["lm_calls"]
    assert band["low"] <= band["typical"] <= band["ceiling"]
    assert all(stage["assumptions"] for stage in body["stages"].values())
    # demos make the optimized program's prompts longer than the baseline's
    assert body["stages"][OPTIMIZED]["prompt_tokens"]["typical"] > body["stages"][BASELINE]["prompt_tokens"]["typical"]
    # the local model has no price: no dollars, and the assumptions say why
    assert body["total"]["cost_usd"] is None and body["prices"]["main"] is None
    assert any("no price known" in note for note in body["assumptions"])


def test_dollars_come_from_the_config_price_or_litellms_cost_map():
    own = {"name": "openai/local-arithmetic", "base_url": LM_URL,
           "extra": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}}
    job = request(model_config=own)
    body = estimate_job(job.spec(), job.dataset).as_dict()
    assert body["prices"]["main"]["source"] == "model_config.extra"
    total = body["total"]
    expected = total["prompt_tokens"]["typical"] * 1e-6 + total["completion_tokens"]["typical"] * 2e-6
    assert total["cost_usd"]["typical"] == pytest.approx(expected, rel=0.01)
    price = model_price(ModelConfig(name="openai/gpt-4o-mini"), "model_config")
    assert price is not None and price.source == "litellm cost map" and price.input_cost_per_token > 0


def test_signature_code_is_read_never_run(tmp_path):
    marker = tmp_path / "ran"
    code = f"import dspy\nopen({str(marker)!r}, 'w').write('x')\n" + ARITHMETIC_SIGNATURE_CODE.split("\n", 1)[1]
    job = request(signature_code=code)
    assert estimate_job(job.spec(), job.dataset).as_dict()["stages"][BASELINE]["lm_calls"]["typical"] == 18
    assert not marker.exists()


def test_what_the_estimate_cannot_answer_names_the_field():
    job = request()
    with pytest.raises(JobError) as no_rows:
        estimate_job(job.spec(), None)
    assert no_rows.value.field == "dataset_source"
    odd = request(optimizer_name="dspy.KNNFewShot", optimizer_kwargs={"k": 2, "trainset": []})
    with pytest.raises(JobError) as unknown:
        estimate_job(odd.spec(), odd.dataset)
    assert unknown.value.field == "optimizer_name"
