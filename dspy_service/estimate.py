"""What a job will cost before it runs: LM calls, tokens and dollars per stage.

`estimate_job(spec, rows)` is `POST /run/estimate`'s answer (and what a budget check at
submit can compare with: `JobEstimate.stages[BASELINE].calls.low` is the least the baseline
evaluation makes). It uses the same split arithmetic as the job (`SplitFractions.counts`,
`registry.fit_to_splits`), the optimizers' own arithmetic (dspy_service/optimizer_calls.py)
and prompt sizes measured from the signature's AST and the rows
(dspy_service/prompt_sizes.py). Nothing runs: no LM call, no user code, no file read.

Dollars come from a model config's own price (`extra.input_cost_per_token` and
`extra.output_cost_per_token`) or litellm's bundled cost map (LITELLM_LOCAL_MODEL_COST_MAP);
a model with neither has `cost_usd: null`.

How it fails: JobError naming the field for an optimizer it has no arithmetic for
(`optimizer_name`) and for a job without inline rows (`dataset_source`: the API never reads
the file); the registry's JobErrors otherwise. A module it does not know is counted as one
predictor making one call per example, and says so.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dspy_service.errors import JobError
from dspy_service.optimizer_calls import (
    ARITHMETIC,
    ZERO,
    Band,
    Shape,
    UnknownOptimizer,
    Work,
    compile_work,
    optimized_demos,
)
from dspy_service.prompt_sizes import (
    CHARS_PER_TOKEN,
    CallSize,
    column_lengths,
    program_call,
    proposal_call,
    reflection_call,
    signature_texts,
)
from dspy_service.registry import fit_to_splits, get_registry
from dspy_service.schemas import JobSpec, ModelConfig

COMPILE, BASELINE, OPTIMIZED = "compile", "baseline_evaluation", "optimized_evaluation"
STAGES = (COMPILE, BASELINE, OPTIMIZED)


@dataclass(frozen=True)
class ModuleShape:
    predictors: int
    calls: Band  # LM calls per example
    extra_outputs: tuple[str, ...]  # output fields the module adds to the signature
    assumption: str


def module_shape(name: str, kwargs: dict[str, Any]) -> ModuleShape:
    """`name`: the DSPy class name of the job's module."""
    if name in ("Predict", "ChainOfThought", "MultiChainComparison"):
        extra = ("reasoning",) if name != "Predict" else ()
        return ModuleShape(1, Band.exact(1), extra, f"{name}: 1 LM call per example")
    if name == "ReAct":
        most = int(kwargs.get("max_iters", 20))
        return ModuleShape(2, Band(2, min(most, 3) + 1, most + 1), ("reasoning",),
                           f"ReAct: 1 call per tool step (typical 3, at most max_iters={most}) + 1 to extract")
    if name == "ProgramOfThought":
        most = int(kwargs.get("max_iters", 3))
        return ModuleShape(3, Band(2, 2, most + 1), ("reasoning",),
                           f"ProgramOfThought: code + answer (up to {most - 1} code regenerations)")
    return ModuleShape(1, Band.exact(1), (), f"module {name} is not one the estimate knows: counted as 1 predictor "
                       "making 1 LM call per example")


def class_name(factory: Any, known: Any) -> str:
    """The first class of `factory`'s MRO in `known` (a subclass counts as its DSPy base)."""
    for cls in inspect.getmro(factory) if inspect.isclass(factory) else ():
        if cls.__name__ in known:
            return cls.__name__
    return getattr(factory, "__name__", type(factory).__name__)


@dataclass
class Figure:
    """Calls, tokens and dollars of one part of a job, each low / typical / ceiling."""

    calls: Band = ZERO
    prompt_tokens: Band = ZERO
    completion_tokens: Band = ZERO
    cost_usd: Band | None = ZERO
    assumptions: list[str] = field(default_factory=list)

    def add(self, other: Figure) -> None:
        self.calls += other.calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost_usd = None if self.cost_usd is None or other.cost_usd is None else self.cost_usd + other.cost_usd
        self.assumptions += [a for a in other.assumptions if a not in self.assumptions]

    def as_dict(self) -> dict[str, Any]:
        cost = self.cost_usd
        return {
            "lm_calls": self.calls.rounded(),
            "prompt_tokens": self.prompt_tokens.rounded(),
            "completion_tokens": self.completion_tokens.rounded(),
            "total_tokens": (self.prompt_tokens + self.completion_tokens).rounded(),
            "cost_usd": None if cost is None else {k: round(v, 6) for k, v in vars(cost).items()},
            "assumptions": list(self.assumptions),
        }


@dataclass(frozen=True)
class Price:
    input_cost_per_token: float
    output_cost_per_token: float
    source: str


COST_MAP_FILE = "model_prices_and_context_window_backup.json"  # litellm's bundled cost map


@functools.lru_cache(maxsize=1)
def litellm_cost_map() -> dict[str, Any]:
    """The cost map litellm uses offline (LITELLM_LOCAL_MODEL_COST_MAP), read as JSON: importing
    litellm itself takes seconds. {} when the file is missing."""
    spec = importlib.util.find_spec("litellm")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / COST_MAP_FILE
        if path.is_file():
            return json.loads(path.read_text())
    return {}


def model_price(config: ModelConfig, field_name: str) -> Price | None:
    """The config's own price, else litellm's bundled cost map's (by the model name, or by
    it without its `provider/` prefix), else None."""
    from dspy_service.lm_usage import take_price

    own = take_price(dict(config.extra), field_name)
    if own is not None:
        return Price(own.input_cost_per_token, own.output_cost_per_token, f"{field_name}.extra")
    costs = litellm_cost_map()
    info = costs.get(config.name) or costs.get(config.name.split("/", 1)[-1]) or {}
    cost_in, cost_out = info.get("input_cost_per_token"), info.get("output_cost_per_token")
    if not isinstance(cost_in, (int, float)) or not isinstance(cost_out, (int, float)):
        return None
    return Price(float(cost_in), float(cost_out), "litellm cost map")


def figure(calls: Band, size: CallSize, price: Price | None, assumptions: list[str]) -> Figure:
    prompt_chars, completion_chars = size.prompt * calls, size.completion * calls
    prompt_tokens = Band(*(v / CHARS_PER_TOKEN for v in (prompt_chars.low, prompt_chars.typical, prompt_chars.ceiling)))
    completion_tokens = Band(*(v / CHARS_PER_TOKEN for v in (completion_chars.low, completion_chars.typical,
                                                              completion_chars.ceiling)))
    cost = None
    if price is not None:
        cost = prompt_tokens * price.input_cost_per_token + completion_tokens * price.output_cost_per_token
    return Figure(calls, prompt_tokens, completion_tokens, cost, assumptions)


@dataclass
class JobEstimate:
    optimizer: str
    module: str
    split_counts: dict[str, int]
    calls_per_example: Band
    stages: dict[str, Figure]
    parts: list[dict[str, Any]]  # the compile stage's figures per kind of call
    prices: dict[str, Price | None]
    assumptions: list[str]

    @property
    def total(self) -> Figure:
        total = Figure()
        for name in STAGES:
            total.add(self.stages[name])
        total.assumptions = [f"the sum of {', '.join(STAGES)}", *self.assumptions]
        return total

    def as_dict(self) -> dict[str, Any]:
        stages = {name: figure.as_dict() for name, figure in self.stages.items()}
        stages[COMPILE]["parts"] = self.parts
        return {
            "optimizer": self.optimizer,
            "module": self.module,
            "split_counts": self.split_counts,
            "lm_calls_per_example": self.calls_per_example.rounded(),
            "stages": stages,
            "total": self.total.as_dict(),
            "prices": {role: None if p is None else vars(p) for role, p in self.prices.items()},
            "assumptions": self.assumptions,
        }


@dataclass
class _Context:
    module: ModuleShape
    texts: Any
    lengths: dict[str, Band]
    prices: dict[str, Price | None]

    def program(self, demos: Band) -> CallSize:
        return program_call(self.texts, self.lengths, self.module.extra_outputs, demos)

    def work_figure(self, work: Work, minibatch: int) -> Figure:
        price = self.prices.get(work.role, self.prices["main"])
        notes = [*work.assumptions]
        if work.kind == "program":
            if work.role != "main":
                notes.append(f"runs the program with the {work.role} model")
            return figure(work.calls * self.module.calls, self.program(work.demos), price, notes)
        size = proposal_call(self.texts) if work.kind == "proposal" else reflection_call(
            self.texts, self.program(ZERO), minibatch)
        return figure(work.calls, size, price, [*notes, f"by the {work.role} model"])


def _prices(spec: JobSpec) -> dict[str, Price | None]:
    return {role: model_price(config, spec.role_field(role)) for role, config in spec.lm_configs().items()}


def estimate_job(spec: JobSpec, rows: list[dict[str, Any]] | None) -> JobEstimate:
    """The job's LM calls, tokens and dollars; `rows` are its inline rows (already validated)."""
    if rows is None:
        raise JobError("the estimate needs the rows inline (`dataset`): the API does not read a dataset_source",
                       field="dataset_source")
    registry = get_registry()
    entry = registry.optimizer(spec.optimizer_name)
    optimizer = class_name(entry.factory, ARITHMETIC)
    module_entry = registry.module(spec.module_name)
    module = module_shape(class_name(module_entry.factory, ("ReAct", "ProgramOfThought", "MultiChainComparison",
                                                            "ChainOfThought", "Predict")), spec.module_kwargs)
    counts = spec.split_fractions.counts(len(rows))
    kwargs = registry.optimizer_defaults(entry, spec.optimizer_kwargs)
    kwargs, compile_kwargs = fit_to_splits(entry, counts, kwargs, spec.compile_kwargs)
    shape = Shape(counts["train"], counts["val"], module.predictors, kwargs, compile_kwargs,
                  frozenset(spec.lm_configs()))
    try:
        work = compile_work(optimizer, shape)
    except UnknownOptimizer as exc:
        raise JobError(f"optimizer_name: {exc}", field="optimizer_name") from None
    context = _Context(module, signature_texts(spec.signature_code),
                       column_lengths(rows, spec.column_mapping.fields), _prices(spec))
    minibatch = int(kwargs.get("reflection_minibatch_size") or 3)
    stages = {COMPILE: Figure(assumptions=[f"{optimizer} on {counts['train']} train / {counts['val']} val examples"])}
    parts = []
    for item in work:
        part = context.work_figure(item, minibatch)
        stages[COMPILE].add(part)
        parts.append({"what": item.what, "role": item.role, **part.as_dict()})
    test = Band.exact(counts["test"]) * module.calls
    main = context.prices["main"]
    stages[BASELINE] = figure(test, context.program(ZERO), main, [f"{counts['test']} test examples, no demos"])
    demos = optimized_demos(shape, optimizer)
    stages[OPTIMIZED] = figure(test, context.program(demos), main, [
        f"{counts['test']} test examples with {demos.typical:g} demos per prompt (typical)"])
    return JobEstimate(optimizer, module_entry.name, counts, module.calls, stages, parts, context.prices,
                       _assumptions(module, context.prices))


def _assumptions(module: ModuleShape, prices: dict[str, Price | None]) -> list[str]:
    notes = [
        module.assumption,
        f"tokens: characters / {CHARS_PER_TOKEN}, prompts laid out as DSPy's ChatAdapter does, value lengths "
        "from the first rows of the dataset",
        "a cold LM cache: a prompt repeated within the job is counted each time (the job's cache answers it "
        "without a paid call)",
        "no retries of failed calls",
    ]
    unpriced = sorted(role for role, price in prices.items() if price is None)
    if unpriced:
        notes.append(f"no price known for the {', '.join(unpriced)} model: cost_usd is null where it is used "
                     "(give extra.input_cost_per_token and extra.output_cost_per_token)")
    return notes
