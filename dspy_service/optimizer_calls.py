"""How many LM calls each optimizer makes: the optimizers' own arithmetic (dspy 3.4.1).

Pure functions of the split sizes, the optimizer's arguments and the module's shape; no
dspy import, no I/O, nothing of the user's code. `compile_work(optimizer, shape)` answers a
list of `Work` items, one per kind of call the optimizer makes (program runs on examples,
instruction proposals, reflections), each with its calls as a low / typical / ceiling
`Band` and the assumption behind it. `POST /run/estimate` (dspy_service/estimate.py)
turns them into calls, tokens and dollars.

What each figure means:
- low: everything goes the cheapest way the optimizer allows (every bootstrap attempt
  passes the metric, no repeated attempt).
- typical: `TYPICAL_PASS_RATE` of bootstrap attempts pass, random sizes at their mean,
  GEPA accepts `GEPA_TYPICAL_ACCEPT_RATE` of its proposals.
- ceiling: the most the optimizer can make with these arguments (no attempt passes, every
  example tried every round; GEPA's budget overshot by one whole iteration).

How it fails: `UnknownOptimizer` (a ValueError) for an optimizer with no arithmetic here;
the caller names the field.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TYPICAL_PASS_RATE = 0.5  # share of bootstrap attempts whose trace passes the metric
GEPA_TYPICAL_ACCEPT_RATE = 0.25  # share of GEPA proposals better on the minibatch (-> a full val evaluation)

# dspy.teleprompt.mipro_optimizer_v2 / gepa.gepa AUTO_RUN_SETTINGS
MIPRO_AUTO = {"light": {"n": 6, "val_size": 100}, "medium": {"n": 12, "val_size": 300},
              "heavy": {"n": 18, "val_size": 1000}}
GEPA_AUTO_N = {"light": 6, "medium": 12, "heavy": 18}
MIPRO_MIN_MINIBATCH_SIZE = 50
MIPRO_ZEROSHOT_BOOTSTRAPPED = 3  # BOOTSTRAPPED_FEWSHOT_EXAMPLES_IN_CONTEXT
DATA_SUMMARY_MAX_CALLS = 10


class UnknownOptimizer(ValueError):
    """No arithmetic for this optimizer."""


@dataclass(frozen=True)
class Band:
    low: float
    typical: float
    ceiling: float

    @classmethod
    def exact(cls, value: float) -> Band:
        return cls(value, value, value)

    def __add__(self, other: Band) -> Band:
        return Band(self.low + other.low, self.typical + other.typical, self.ceiling + other.ceiling)

    def __mul__(self, other: Band | float) -> Band:
        if isinstance(other, Band):
            return Band(self.low * other.low, self.typical * other.typical, self.ceiling * other.ceiling)
        return Band(self.low * other, self.typical * other, self.ceiling * other)

    def rounded(self) -> dict[str, int]:
        return {"low": round(self.low), "typical": round(self.typical), "ceiling": round(self.ceiling)}


ZERO = Band.exact(0)


@dataclass(frozen=True)
class Shape:
    """What the arithmetic needs to know about a job."""

    train: int
    val: int
    predictors: int = 1  # predictors of the module (Predict, ChainOfThought: 1; ReAct: 2)
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    compile_kwargs: dict[str, Any] = field(default_factory=dict)
    roles: frozenset[str] = frozenset({"main"})  # model roles the job configures

    def arg(self, name: str, default: Any) -> Any:
        """A compile argument wins over the constructor's (MIPROv2 takes some in both)."""
        for kwargs in (self.compile_kwargs, self.optimizer_kwargs):
            if kwargs.get(name) is not None:
                return kwargs[name]
        return default

    def role(self, wanted: str) -> str:
        return wanted if wanted in self.roles else "main"


@dataclass(frozen=True)
class Work:
    """One kind of LM call of the compile stage.

    `kind` "program": `calls` counts runs of the student program on one example (times the
    module's calls per example later), with `demos` demonstrations in each prompt;
    "proposal" / "reflection": `calls` counts LM calls of the optimizer's own prompts."""

    what: str
    kind: str
    role: str
    calls: Band
    demos: Band = ZERO
    assumptions: tuple[str, ...] = ()


def bootstrap_attempts(train: int, wanted: float, max_rounds: int = 1, pass_rate: float = TYPICAL_PASS_RATE) -> Band:
    """Program runs of BootstrapFewShot._bootstrap: examples in order until `wanted` traces
    passed, each tried up to `max_rounds` times."""
    if wanted <= 0 or train <= 0:
        return ZERO
    rounds = max(1, int(max_rounds))
    passed_per_example = 1 - (1 - pass_rate) ** rounds
    attempts_per_example = passed_per_example / pass_rate  # sum_{k<rounds} (1 - p)^k
    examples = min(train, wanted / passed_per_example)
    return Band(min(wanted, train), examples * attempts_per_example, train * rounds)


def _bootstrap_args(shape: Shape, labeled_default: int) -> tuple[int, int, int]:
    return (int(shape.arg("max_bootstrapped_demos", 4)), int(shape.arg("max_labeled_demos", labeled_default)),
            int(shape.arg("max_rounds", 1)))


def bootstrap_few_shot(shape: Shape) -> list[Work]:
    boot, labeled, rounds = _bootstrap_args(shape, 16)
    return [Work(
        "bootstrap traces on the train split", "program", shape.role("main"),
        bootstrap_attempts(shape.train, boot, rounds), Band.exact(min(labeled, max(shape.train - 1, 0))),
        (f"stops once {boot} traces passed the metric; typical: {TYPICAL_PASS_RATE:.0%} of attempts pass, "
         f"ceiling: every train example tried {rounds} time(s)",),
    )]


def labeled_few_shot(shape: Shape) -> list[Work]:
    return []


def optimized_demos(shape: Shape, optimizer: str) -> Band:
    """Demonstrations in each prompt of the optimized program."""
    if optimizer == "LabeledFewShot":
        return Band.exact(min(int(shape.arg("k", 16)), shape.train))
    if optimizer in ("BootstrapFewShot", "BootstrapFewShotWithRandomSearch"):
        boot, labeled, _ = _bootstrap_args(shape, 16)
        most = min(max(labeled, boot), shape.train)
        return Band(min(labeled, shape.train), most, most)
    if optimizer == "MIPROv2":
        return mipro_demo_sets(shape)
    if optimizer == "SIMBA":
        return Band(0, int(shape.arg("max_demos", 4)) / 2, int(shape.arg("max_demos", 4)))
    return ZERO


def random_search_sizes(candidates: int, boot: int) -> list[int]:
    """The demo count BootstrapFewShotWithRandomSearch draws for seeds 0..candidates-1."""
    return [random.Random(seed).randint(1, boot) for seed in range(candidates)] if boot >= 1 else [0] * candidates


def bootstrap_random_search(shape: Shape) -> list[Work]:
    boot, labeled, rounds = _bootstrap_args(shape, 16)
    candidates = int(shape.arg("num_candidate_programs", 16))
    valset = shape.val or shape.train
    runs = bootstrap_attempts(shape.train, boot, rounds)
    for size in random_search_sizes(candidates, boot):
        runs = runs + bootstrap_attempts(shape.train, size, rounds)
    demo_counts = [0, min(labeled, shape.train), max(labeled, boot)]
    demo_counts += [max(labeled, size) for size in random_search_sizes(candidates, boot)]
    demo_counts = [min(count, shape.train) for count in demo_counts]
    stops = shape.arg("stop_at_score", None) is not None
    evaluations = Band(valset if stops else valset * (candidates + 3), valset * (candidates + 3),
                       valset * (candidates + 3))
    teacher = Band.exact(min(labeled, max(shape.train - 1, 0)))
    return [
        Work("bootstrap traces for each candidate", "program", shape.role("main"), runs, teacher,
             (f"{candidates} random demo sets of 1..{boot} traces (seeded, as DSPy draws them) plus one of {boot}; "
              f"typical: {TYPICAL_PASS_RATE:.0%} of attempts pass",)),
        Work("score each candidate on the validation set", "program", shape.role("main"), evaluations,
             Band(min(demo_counts), sum(demo_counts) / len(demo_counts), max(demo_counts)),
             (f"{candidates + 3} candidates x {valset} {'val' if shape.val else 'train'} examples"
              + ("; low: stop_at_score reached by the first" if stops else ""),)),
    ]


def _mipro_settings(shape: Shape, zeroshot: bool) -> dict[str, Any]:
    """num_trials, valset size, minibatching and candidate counts, as MIPROv2.compile sets them."""
    auto = shape.optimizer_kwargs.get("auto", "light")
    train, valset = shape.train, shape.val
    if not valset:  # MIPROv2 cuts its valset from the train split
        valset = min(1000, max(1, int(train * 0.8)))
        train -= valset
    if auto is None:
        n = int(shape.optimizer_kwargs.get("num_candidates") or 0)
        return {"train": train, "valset": valset, "trials": int(shape.compile_kwargs.get("num_trials") or 0),
                "minibatch": bool(shape.compile_kwargs.get("minibatch", True)), "instruct": n, "fewshot": n}
    n = MIPRO_AUTO[auto]["n"]
    valset = min(valset, MIPRO_AUTO[auto]["val_size"])
    variables = shape.predictors * (1 if zeroshot else 2)
    trials = int(max(2 * variables * math.log2(n), 1.5 * n))
    return {"train": train, "valset": valset, "trials": trials, "minibatch": valset > MIPRO_MIN_MINIBATCH_SIZE,
            "instruct": n if zeroshot else int(n * 0.5), "fewshot": n}


def mipro_full_evaluations(trials: int, full_eval_steps: int) -> int:
    """Full validation-set evaluations inside MIPROv2's minibatch loop (not the default program's)."""
    adjusted = trials + trials // full_eval_steps + 1 + (1 if trials % full_eval_steps else 0)
    return sum(1 for n in range(2, trials + 2) if n % (full_eval_steps + 1) == 0 or n == adjusted - 1)


def mipro_demo_sets(shape: Shape) -> Band:
    """Demos per prompt over MIPROv2's candidate sets (none, labeled, one full bootstrap,
    random 1..max bootstraps): the trials pick among them."""
    boot, labeled = int(shape.arg("max_bootstrapped_demos", 4)), int(shape.arg("max_labeled_demos", 4))
    if boot == 0 and labeled == 0:
        return ZERO
    sets = _mipro_settings(shape, zeroshot=False)["fewshot"]
    counts = [0, labeled, max(labeled, boot)] + [max(labeled, (1 + boot) / 2)] * max(sets - 3, 0)
    counts = [min(count, shape.train) for count in counts]
    return Band(0, sum(counts) / len(counts), max(counts))


def _data_summary_calls(train: int, batch: int) -> Band:
    batches = len(range(batch, train, batch))
    most = 1 + min(batches, DATA_SUMMARY_MAX_CALLS - 1) + 1
    return Band(2, most, most)


def mipro_v2(shape: Shape) -> list[Work]:
    boot, labeled = int(shape.arg("max_bootstrapped_demos", 4)), int(shape.arg("max_labeled_demos", 4))
    zeroshot = boot == 0 and labeled == 0
    s = _mipro_settings(shape, zeroshot)
    task, prompt = shape.role("task"), shape.role("prompt")
    wanted = MIPRO_ZEROSHOT_BOOTSTRAPPED if zeroshot else boot
    runs = bootstrap_attempts(s["train"], wanted)
    for _ in range(max(s["fewshot"] - 3, 0)):  # seeds 0.. draw 1..wanted traces each
        draw = bootstrap_attempts(s["train"], (1 + wanted) / 2)
        runs = runs + Band(min(1, s["train"]), draw.typical, s["train"])
    aware = bool(shape.compile_kwargs.get("program_aware_proposer", True))
    per_instruction = Band(1, 3, 3) if aware else Band.exact(1)
    proposals = _data_summary_calls(s["train"], int(shape.compile_kwargs.get("view_data_batch_size", 10)))
    proposals = proposals + per_instruction * (shape.predictors * s["instruct"])
    steps = int(shape.compile_kwargs.get("minibatch_full_eval_steps", 5))
    batch = int(shape.compile_kwargs.get("minibatch_size", 35)) if s["minibatch"] else s["valset"]
    fulls = mipro_full_evaluations(s["trials"], steps) if s["minibatch"] else 0
    evaluations = Band.exact(s["valset"] * (1 + fulls) + batch * s["trials"])
    return [
        Work("bootstrap demo candidate sets", "program", task, runs, Band.exact(min(labeled, s["train"])),
             (f"{s['fewshot']} candidate sets ({max(s['fewshot'] - 3, 0)} of 1..{wanted} random traces, one of "
              f"{wanted}); typical: {TYPICAL_PASS_RATE:.0%} of attempts pass",)),
        Work("propose instructions", "proposal", prompt, proposals, ZERO,
             (f"dataset summary (1 call per {shape.compile_kwargs.get('view_data_batch_size', 10)} train examples, "
              f"at most {DATA_SUMMARY_MAX_CALLS}) + {s['instruct']} instruction(s) per predictor"
              + (", 3 calls each (program and module description)" if aware else ""),)),
        Work("trials", "program", task, evaluations, mipro_demo_sets(shape),
             (f"default program on {s['valset']} val examples + {s['trials']} trials of {batch} examples"
              + (f" + {fulls} full evaluations" if fulls else ""),)),
    ]


def gepa_budget(shape: Shape) -> int:
    """max_metric_calls as GEPA.compile sets it."""
    kwargs = shape.optimizer_kwargs
    if kwargs.get("max_metric_calls") is not None:
        return int(kwargs["max_metric_calls"])
    if kwargs.get("max_full_evals") is not None:
        return int(kwargs["max_full_evals"]) * (shape.train + shape.val)
    n = GEPA_AUTO_N[kwargs.get("auto") or "light"]
    valset = shape.val or shape.train
    trials = int(max(2 * (max(shape.predictors, 1) * 2) * math.log2(n), 1.5 * n))
    minibatch, steps = 35, 5
    total = valset + n * 5 + trials * minibatch
    return total + ((trials + 1) // steps + 1 + (1 if trials < steps else 0)) * valset


def gepa(shape: Shape) -> list[Work]:
    budget = gepa_budget(shape)
    valset = shape.val or shape.train
    minibatch = int(shape.optimizer_kwargs.get("reflection_minibatch_size") or 3)
    spend = max(budget - valset, 0)  # the seed candidate's validation score comes first
    iteration = 2 * minibatch
    typical_iterations = spend / (iteration + GEPA_TYPICAL_ACCEPT_RATE * valset)
    return [
        Work("evaluate candidates (metric calls)", "program", shape.role("main"),
             Band(max(budget, valset), max(budget, valset) + minibatch, max(budget, valset) + iteration + valset),
             ZERO, (f"max_metric_calls {budget}; the last iteration may overshoot by its minibatches "
                    f"({iteration}) and one val evaluation ({valset})",)),
        Work("reflect on minibatches", "reflection", shape.role("reflection"),
             Band(0, typical_iterations, math.ceil(spend / iteration) + 1), ZERO,
             (f"one reflection call per iteration; typical: {GEPA_TYPICAL_ACCEPT_RATE:.0%} of proposals win "
              "their minibatch and are scored on the val set; low: every minibatch already perfect",)),
    ]


def copro_proposals(breadth: int, depth: int, predictors: int) -> Band:
    """COPRO's proposal requests: per predictor, one call for breadth - 1 instructions,
    then depth - 1 calls for breadth each (n completions are n requests on DSPy's native
    engine, tasks/language_models.py counts them so; low: one request per call)."""
    calls = predictors * depth
    requests = predictors * ((breadth - 1) + (depth - 1) * breadth)
    return Band(calls, requests, requests)


def copro(shape: Shape) -> list[Work]:
    breadth, depth = int(shape.optimizer_kwargs.get("breadth", 10)), int(shape.optimizer_kwargs.get("depth", 3))
    predictors = shape.predictors
    # One predictor: breadth candidates per depth. More: every candidate so far, again.
    candidates = breadth * depth if predictors == 1 else breadth * depth * (depth + 1) / 2
    return [
        Work("propose instructions", "proposal", shape.role("prompt"), copro_proposals(breadth, depth, predictors),
             ZERO, (f"1 call per predictor and depth, for {breadth - 1} then {breadth} instructions at once: "
                    "DSPy's native engine sends one request per instruction (low: a provider path that takes n "
                    "in one request)",)),
        Work("score candidates on the train split", "program", shape.role("main"),
             Band.exact(predictors * candidates * shape.train), ZERO,
             (f"{breadth} candidates x depth {depth} x {shape.train} train examples per predictor",)),
    ]


def simba(shape: Shape) -> list[Work]:
    kwargs = shape.optimizer_kwargs
    bsize = min(int(kwargs.get("bsize") or 32), shape.train)
    candidates, steps = int(kwargs.get("num_candidates", 6)), int(kwargs.get("max_steps", 8))
    demos = int(kwargs.get("max_demos", 4))
    built = min(bsize, candidates + 1)
    rules = Band(0, built / 2 if demos > 0 else built, built) * steps
    runs = Band.exact(steps * bsize * candidates) + Band(0, built, built) * (steps * bsize)
    runs = runs + Band.exact(min(candidates + 1, steps + 1) * shape.train)
    return [
        Work("sample trajectories and score candidates", "program", shape.role("main"), runs,
             Band(0, demos / 2, demos),
             (f"{steps} steps x ({bsize} examples x {candidates} samples + up to {built} candidates x {bsize}) "
              f"+ {min(candidates + 1, steps + 1)} programs on the {shape.train} train examples",)),
        Work("write rules", "proposal", shape.role("prompt"), rules, ZERO,
             ("one call per candidate built with the append-a-rule strategy (half of them when demos are on)",)),
    ]


ARITHMETIC: dict[str, Callable[[Shape], list[Work]]] = {
    "BootstrapFewShotWithRandomSearch": bootstrap_random_search,
    "BootstrapFewShot": bootstrap_few_shot,
    "MIPROv2": mipro_v2,
    "GEPA": gepa,
    "COPRO": copro,
    "SIMBA": simba,
    "LabeledFewShot": labeled_few_shot,
}


def compile_work(optimizer: str, shape: Shape) -> list[Work]:
    """`optimizer`: the DSPy class name (a key of ARITHMETIC)."""
    arithmetic = ARITHMETIC.get(optimizer)
    if arithmetic is None:
        raise UnknownOptimizer(f"no estimate for optimizer {optimizer}; known: {sorted(ARITHMETIC)}")
    return arithmetic(shape)
