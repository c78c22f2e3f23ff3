"""Which DSPy modules and optimizers a job may name, and what arguments they accept.

Used by the API (static validation: names resolve, kwargs fit the real signatures) and by
the flow (instantiation). Names are an alias of the table below, a dotted `dspy.*` path,
or a custom factory registered in Python code: a plugin module listed in
`DSPY_SERVICE_PLUGINS` (comma-separated import paths) exposing `register(registry)`.
Plugins must be importable by the API and by every worker.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dspy_service.errors import JobError

BUILTIN_MODULES: dict[str, str] = {
    "predict": "dspy.Predict",
    "cot": "dspy.ChainOfThought",
    "chain_of_thought": "dspy.ChainOfThought",
}

BUILTIN_OPTIMIZERS: dict[str, str] = {
    "miprov2": "dspy.MIPROv2",
    "gepa": "dspy.GEPA",
    "bootstrap": "dspy.BootstrapFewShot",
    "bootstrap_few_shot": "dspy.BootstrapFewShot",
    "bootstrap_random_search": "dspy.BootstrapFewShotWithRandomSearch",
    "copro": "dspy.COPRO",
    "simba": "dspy.SIMBA",
    "labeled_few_shot": "dspy.LabeledFewShot",
}

# Arguments the service fills in itself; a user value for them is an error.
SERVICE_OWNED_INIT = {"metric"}
SERVICE_OWNED_COMPILE = {"student", "trainset", "valset", "teacher"}
# Optimizer arguments that take an LM, by the JobSpec role that provides it.
LM_ARGUMENTS = {"reflection_lm": "reflection", "prompt_model": "prompt", "task_model": "task"}

ALLOWED_DOTTED_PREFIX = "dspy."


def import_dotted(path: str) -> Any:
    """`dspy.teleprompt.MIPROv2` -> the object, importing the longest module prefix."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


@dataclass(frozen=True)
class Parameters:
    """The keyword arguments a callable accepts, read with `inspect.signature`."""

    names: frozenset[str]
    required: frozenset[str]
    open_ended: bool  # takes **kwargs that it really uses

    @classmethod
    def of(cls, func: Callable, *, skip_first: bool = False) -> Parameters:
        params = list(inspect.signature(func).parameters.values())
        if skip_first:
            params = params[1:]
        names, required, open_ended = set(), set(), False
        for p in params:
            if p.kind is p.VAR_KEYWORD:
                # DSPy marks swallowed-and-ignored kwargs with a leading underscore
                # (COPRO's **_kwargs): accepting those would hide a user's typo.
                open_ended = not p.name.startswith("_")
            elif p.kind is not p.VAR_POSITIONAL:
                names.add(p.name)
                if p.default is p.empty:
                    required.add(p.name)
        return cls(frozenset(names), frozenset(required), open_ended)

    def accepts(self, name: str) -> bool:
        return self.open_ended or name in self.names


@dataclass(frozen=True)
class OptimizerEntry:
    name: str
    factory: Callable[..., Any]

    @functools.cached_property
    def init_params(self) -> Parameters:
        if inspect.isclass(self.factory):
            return Parameters.of(self.factory.__init__, skip_first=True)
        return Parameters.of(self.factory)

    @functools.cached_property
    def compile_params(self) -> Parameters | None:
        """None for plain factories: their compile() is known only after building one."""
        if inspect.isclass(self.factory) and hasattr(self.factory, "compile"):
            return Parameters.of(self.factory.compile, skip_first=True)
        return None

    @property
    def uses_feedback_metric(self) -> bool:
        """GEPA-style optimizers call metric(gold, pred, trace, pred_name, pred_trace)."""
        import dspy

        return inspect.isclass(self.factory) and issubclass(self.factory, dspy.GEPA)

    def accepts_valset(self, compile_params: Parameters | None = None) -> bool:
        params = compile_params or self.compile_params
        return params is not None and "valset" in params.names


@dataclass(frozen=True)
class ModuleEntry:
    name: str
    factory: Callable[..., Any]  # factory(signature, **module_kwargs) -> dspy.Module

    @functools.cached_property
    def params(self) -> Parameters:
        if inspect.isclass(self.factory):
            return Parameters.of(self.factory.__init__, skip_first=True)
        return Parameters.of(self.factory)


class ServiceRegistry:
    """Name -> module/optimizer factory, plus the argument rules for each."""

    def __init__(self) -> None:
        self._modules: dict[str, Callable[..., Any] | str] = dict(BUILTIN_MODULES)
        self._optimizers: dict[str, Callable[..., Any] | str] = dict(BUILTIN_OPTIMIZERS)

    # -- registration ---------------------------------------------------------------
    def register_module(self, name: str, factory: Callable[..., Any]) -> None:
        """`factory(signature, **module_kwargs)` must return a dspy.Module."""
        self._modules[name] = factory

    def register_optimizer(self, name: str, factory: Callable[..., Any]) -> None:
        """`factory(metric=..., **optimizer_kwargs)` must return an object with compile()."""
        self._optimizers[name] = factory

    def module_name_of(self, module_class: type) -> str | None:
        """The name a module class is registered under (a class factory only), if any."""
        return next((name for name, factory in self._modules.items() if factory is module_class), None)

    def asset_names(self) -> dict[str, list[str]]:
        return {"modules": sorted(self._modules), "metrics": [], "optimizers": sorted(self._optimizers)}

    # -- resolution -----------------------------------------------------------------
    def module(self, name: str) -> ModuleEntry:
        factory = self._resolve(name, self._modules, kind="module", field="module_name")
        import dspy

        if inspect.isclass(factory) and not issubclass(factory, dspy.Module):
            raise JobError(f"module_name {name!r} is not a dspy.Module", field="module_name")
        return ModuleEntry(name, factory)

    def optimizer(self, name: str) -> OptimizerEntry:
        factory = self._resolve(name, self._optimizers, kind="optimizer", field="optimizer_name")
        import dspy

        if inspect.isclass(factory) and not issubclass(factory, dspy.teleprompt.Teleprompter):
            raise JobError(
                f"optimizer_name {name!r} is not a DSPy optimizer (teleprompter)",
                field="optimizer_name",
            )
        return OptimizerEntry(name, factory)

    def _resolve(self, name: str, table: dict, *, kind: str, field: str) -> Callable[..., Any]:
        target = table.get(name, table.get(name.lower()))
        if target is None and name.startswith(ALLOWED_DOTTED_PREFIX):
            target = name
        if target is None:
            raise JobError(
                f"{field}: unknown {kind} {name!r}; use one of {sorted(table)} or a dotted "
                f"path such as 'dspy.{'ChainOfThought' if kind == 'module' else 'MIPROv2'}'",
                field=field,
            )
        if callable(target):
            return target
        try:
            return import_dotted(target)
        except (ImportError, AttributeError):
            raise JobError(f"{field}: cannot find {kind} {name!r} in DSPy", field=field) from None

    # -- argument rules ---------------------------------------------------------------
    def check_module_kwargs(self, entry: ModuleEntry, module_kwargs: dict[str, Any]) -> None:
        _check_kwargs(
            "module_kwargs", module_kwargs, entry.name, entry.params,
            owned={"signature"}, owned_by="from signature_code", hidden={"signature"},
        )

    def check_optimizer_kwargs(
        self,
        entry: OptimizerEntry,
        optimizer_kwargs: dict[str, Any],
        compile_kwargs: dict[str, Any],
        *,
        lm_roles: set[str],
    ) -> None:
        """Raise JobError for a kwarg the optimizer or its compile() would not take."""
        init = entry.init_params
        _check_kwargs(
            "optimizer_kwargs", optimizer_kwargs, entry.name, init,
            owned=SERVICE_OWNED_INIT, owned_by="(from metric_code)", hidden=SERVICE_OWNED_INIT | set(LM_ARGUMENTS),
        )
        for argument, role in LM_ARGUMENTS.items():
            if role in lm_roles and not init.accepts(argument):
                raise JobError(
                    f"{role}_model_config is set but {entry.name} takes no {argument}; remove it",
                    field=f"{role}_model_config",
                )
        if entry.uses_feedback_metric:
            if "reflection" not in lm_roles and "instruction_proposer" not in optimizer_kwargs:
                raise JobError(
                    f"{entry.name} needs a reflection model: set reflection_model_config "
                    '(e.g. {"name": "openai/gpt-4o"}) or optimizer_kwargs.reflection_lm',
                    field="reflection_model_config",
                )
        missing = init.required - SERVICE_OWNED_INIT - set(LM_ARGUMENTS) - set(optimizer_kwargs)
        if missing:
            raise JobError(
                f"optimizer_kwargs is missing required argument(s) {sorted(missing)} of {entry.name}",
                field="optimizer_kwargs",
            )
        self.check_compile_kwargs(entry, compile_kwargs)

    def check_compile_kwargs(
        self, entry: OptimizerEntry, compile_kwargs: dict[str, Any], compile_params: Parameters | None = None
    ) -> None:
        """`compile_params` comes from a built optimizer when the factory is not a class."""
        _check_kwargs(
            "compile_kwargs", compile_kwargs, f"{entry.name}.compile()", compile_params or entry.compile_params,
            owned=SERVICE_OWNED_COMPILE, owned_by="(from dataset, split_fractions and module_name)",
            hidden=SERVICE_OWNED_COMPILE,
        )

    def optimizer_defaults(self, entry: OptimizerEntry, optimizer_kwargs: dict[str, Any]) -> dict[str, Any]:
        """Sane defaults the service adds where DSPy would otherwise refuse to start."""
        import dspy

        kwargs = dict(optimizer_kwargs)
        if inspect.isclass(entry.factory) and issubclass(entry.factory, dspy.GEPA):
            if not {"auto", "max_full_evals", "max_metric_calls"} & kwargs.keys():
                kwargs["auto"] = "light"
        return kwargs


def fit_to_splits(
    entry: OptimizerEntry,
    counts: dict[str, int],
    optimizer_kwargs: dict[str, Any],
    compile_kwargs: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check the splits are big enough for the optimizer's batch sizes.

    A batch size the user left at DSPy's default is shrunk to fit (DSPy would refuse to
    start); one the user set explicitly and that does not fit is an error.
    """
    import dspy

    optimizer_kwargs, compile_kwargs = dict(optimizer_kwargs), dict(compile_kwargs)
    train, val = counts["train"], counts["val"]
    if train < 1:
        raise JobError("the train split is empty: add rows or raise split_fractions.train", field="split_fractions")
    factory = entry.factory
    if not inspect.isclass(factory):
        return optimizer_kwargs, compile_kwargs
    if issubclass(factory, dspy.MIPROv2):
        # With `auto` MIPROv2 decides minibatching itself (only above 50 val examples).
        auto = optimizer_kwargs.get("auto", "light")
        valset = val if val else max(1, int(train * 0.8))
        if auto is None and compile_kwargs.get("minibatch", True):
            compile_kwargs["minibatch_size"] = _size_within(
                compile_kwargs.get("minibatch_size"), 35, valset, "compile_kwargs.minibatch_size",
                f"the validation set ({valset} examples); lower it, set minibatch=false, or add data",
            )
        if not val and train < 2:
            raise JobError(
                "MIPROv2 needs at least 2 training examples when the val split is empty", field="split_fractions"
            )
    elif issubclass(factory, dspy.SIMBA):
        optimizer_kwargs["bsize"] = _size_within(
            optimizer_kwargs.get("bsize"), 32, train, "optimizer_kwargs.bsize",
            f"the train split ({train} examples); lower bsize or add data",
        )
    elif issubclass(factory, dspy.GEPA) and val == 0 and train < 2:
        raise JobError("GEPA needs at least 2 examples to train and validate on", field="split_fractions")
    return optimizer_kwargs, compile_kwargs


def _check_kwargs(
    field: str,
    kwargs: dict[str, Any],
    owner: str,
    params: Parameters | None,
    *,
    owned: set[str],
    owned_by: str,
    hidden: set[str],
) -> None:
    """A 400 naming `field.key` for a key the service sets itself (`owned`) or that
    `owner` does not accept (`params`; None: anything goes)."""
    for key in kwargs:
        if key in owned:
            raise JobError(f"{field}.{key} is set by the service {owned_by}; remove it", field=field)
        if params is not None and not params.accepts(key):
            raise JobError(
                f"{field}.{key}: {owner} does not accept {key!r}; accepted: {sorted(params.names - hidden)}",
                field=field,
            )


def _size_within(size: int | None, default: int, available: int, name: str, what: str) -> int:
    """A batch size: `size` if it fits in `available` examples, else a 400 naming the
    field; unset, the smaller of `default` and what is available."""
    if size is None:
        return min(default, available)
    if size > available:
        raise JobError(f"{name}={size} exceeds {what}", field=name.split(".")[0])
    return size


def _load_plugins(registry: ServiceRegistry) -> None:
    for path in filter(None, (p.strip() for p in os.environ.get("DSPY_SERVICE_PLUGINS", "").split(","))):
        module = importlib.import_module(path)
        register = getattr(module, "register", None)
        if not callable(register):
            raise RuntimeError(f"plugin {path} has no register(registry) function")
        register(registry)


@functools.lru_cache(maxsize=1)
def get_registry() -> ServiceRegistry:
    """The process-wide registry: built-ins plus the configured plugins."""
    registry = ServiceRegistry()
    _load_plugins(registry)
    return registry
