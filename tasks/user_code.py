"""Stage 3: execute the submitted signature and metric code and check what it defines.

This is the only place user code runs, and it runs only inside a flow run. Each piece of
code gets a fresh namespace with a module name that is not in `sys.modules`, so
cloudpickle stores the user's classes by value inside the saved program.
"""

from __future__ import annotations

import builtins
import inspect
import linecache
import threading
import traceback
import types
import typing
import uuid
from dataclasses import dataclass
from typing import Any

import dspy
import pydantic

from dspy_service.code_checks import (
    SignatureOutline,
    check_fields_against_mapping,
    find_metric_name,
    outline_signature,
)
from dspy_service.contract import Stage
from dspy_service.errors import JobError, out_of_memory_message
from dspy_service.registry import get_registry
from dspy_service.schemas import JobSpec
from tasks import stage


def describe_user_exception(exc: BaseException, filename: str, source: str) -> str:
    """`metric_code line 3 (`return pred.answr`): AttributeError: ...` from a traceback."""
    lineno = None
    for frame, line in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == filename:
            lineno = line
    if lineno is None and isinstance(exc, SyntaxError) and exc.filename == filename:
        lineno = exc.lineno
    name = filename.strip("<>")
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, MemoryError):
        text = f"MemoryError: {out_of_memory_message()}"
    if lineno is None:
        return f"{name} raised {text}"
    lines = source.splitlines()
    code = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
    return f"{name} line {lineno} (`{code}`) raised {text}"


def exec_user_code(source: str, field_name: str) -> tuple[dict[str, Any], str]:
    """Run `source` in a fresh namespace; returns (namespace, its module name)."""
    module_name = f"dspy_user_code_{uuid.uuid4().hex[:12]}"
    filename = f"<{field_name}>"
    # Tracebacks and inspect.getsource() can then show the user's lines.
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace: dict[str, Any] = {
        "__name__": module_name,
        "__builtins__": builtins,
        "dspy": dspy,
        "typing": typing,
        "pydantic": pydantic,
    }
    try:
        code = compile(source, filename, "exec")
        exec(code, namespace)  # noqa: S102 - executing user code is this stage's purpose
    except (Exception, SystemExit) as exc:
        raise JobError(describe_user_exception(exc, filename, source), field=field_name) from None
    return namespace, module_name


def _defined_here(value: Any, module_name: str) -> bool:
    return getattr(value, "__module__", None) == module_name


def find_signature(namespace: dict[str, Any], module_name: str) -> type[dspy.Signature]:
    signatures = [
        v
        for v in namespace.values()
        if isinstance(v, type) and issubclass(v, dspy.Signature) and _defined_here(v, module_name)
    ]
    if len(signatures) != 1:
        names = ", ".join(s.__name__ for s in signatures) or "none"
        raise JobError(
            f"signature_code must define exactly one dspy.Signature subclass; it defines {names}",
            field="signature_code",
        )
    return signatures[0]


def find_metric(namespace: dict[str, Any], module_name: str) -> Any:
    if callable(namespace.get("metric")):
        return namespace["metric"]
    functions = [
        v for k, v in namespace.items() if isinstance(v, types.FunctionType) and _defined_here(v, module_name)
    ]
    if len(functions) != 1:
        raise JobError(
            "metric_code must define `metric` or exactly one function; it defines "
            f"{len(functions)} functions",
            field="metric_code",
        )
    return functions[0]


def _positional_capacity(func: Any) -> int:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return 5
    count = 0
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            return 5
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


def _score_of(value: Any) -> float:
    """A number from whatever the metric returned; `Prediction(score=0)` is truthy!"""
    if value is None:
        raise TypeError("the metric returned None; return a number or a bool")
    if isinstance(value, dspy.Prediction) or hasattr(value, "score"):
        value = value.score
    elif isinstance(value, dict) and "score" in value:
        value = value["score"]
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"the metric returned {type(value).__name__} {value!r}; return a number") from None


class UserMetric:
    """Calls the user's metric with the arguments it accepts and records its failures.

    `numeric` mode (every optimizer but GEPA, and evaluation) returns a float. Feedback
    mode (GEPA) takes GEPA's five arguments and passes `Prediction(score, feedback)`
    through. Failures are counted so a metric that raises on every call fails the job
    instead of letting the optimizer "succeed" on zeros.
    """

    def __init__(self, func: Any, source: str, *, feedback: bool = False):
        self.func = func
        self.source = source
        self.feedback = feedback
        self.name = getattr(func, "__name__", "metric")
        self._arity = _positional_capacity(func)
        self._lock = threading.Lock()
        self.calls = 0
        self.failures = 0
        self.first_failure: str | None = None

    def with_mode(self, *, feedback: bool) -> UserMetric:
        return UserMetric(self.func, self.source, feedback=feedback)

    def __call__(self, gold, pred, trace=None, pred_name=None, pred_trace=None):
        args = (gold, pred, trace, pred_name, pred_trace)[: max(2, min(self._arity, 5))]
        try:
            value = self.func(*args)
            if self.feedback and (isinstance(value, dspy.Prediction) or isinstance(value, dict)):
                score = _score_of(value)
                feedback = value.get("feedback") if isinstance(value, dict) else getattr(value, "feedback", None)
                result: Any = dspy.Prediction(score=score, feedback=feedback or "")
            else:
                result = _score_of(value)
        except Exception as exc:
            self._record(exc)
            raise
        except BaseException as exc:  # sys.exit() in a metric must not end the job process
            self._record(exc)
            raise RuntimeError(f"the metric raised {type(exc).__name__}") from exc
        with self._lock:
            self.calls += 1
        return result

    def _record(self, exc: BaseException) -> None:
        with self._lock:
            self.calls += 1
            self.failures += 1
            if self.first_failure is None:
                self.first_failure = describe_user_exception(exc, "<metric_code>", self.source)

    def reset_counts(self) -> None:
        with self._lock:
            self.calls = self.failures = 0
            self.first_failure = None

    def raise_if_always_failing(self, stage: str) -> None:
        if self.calls and self.failures == self.calls:
            raise JobError(
                f"the metric raised on every one of its {self.calls} calls during {stage}; "
                f"first failure: {self.first_failure}",
                field="metric_code",
            )


@dataclass
class UserCode:
    signature: type[dspy.Signature]
    metric: UserMetric  # numeric mode; `metric.with_mode(feedback=True)` for GEPA

    @property
    def metric_name(self) -> str:
        return self.metric.name


def outline_of(signature: type[dspy.Signature]) -> SignatureOutline:
    return SignatureOutline(
        name=signature.__name__,
        input_fields=list(signature.input_fields),
        output_fields=list(signature.output_fields),
    )


def dry_run_prediction(example: dspy.Example, signature: type[dspy.Signature]) -> dspy.Prediction:
    """A prediction that simply repeats the gold labels: no LM call needed."""
    values = {name: "" for name in signature.output_fields}
    values["reasoning"] = ""
    values.update(example.labels().toDict())
    return dspy.Prediction(**values)


@stage(Stage.LOAD_USER_CODE)
def load_user_code(spec: JobSpec, sample: dspy.Example) -> UserCode:
    """Exec signature and metric code, check them against the mapping, dry-run the metric."""
    outline_signature(spec.signature_code)  # same words as the API for shape problems
    find_metric_name(spec.metric_code)
    namespace, module_name = exec_user_code(spec.signature_code, "signature_code")
    signature = find_signature(namespace, module_name)
    check_fields_against_mapping(outline_of(signature), spec.column_mapping.inputs, spec.column_mapping.outputs)

    metric_namespace, metric_module = exec_user_code(spec.metric_code, "metric_code")
    func = find_metric(metric_namespace, metric_module)
    feedback = get_registry().optimizer(spec.optimizer_name).uses_feedback_metric
    metric = UserMetric(func, spec.metric_code, feedback=feedback)
    prediction = dry_run_prediction(sample, signature)
    try:
        metric(sample, prediction, None)
    except BaseException as exc:
        message = describe_user_exception(exc, "<metric_code>", spec.metric_code)
        if isinstance(exc, TypeError) and "the metric returned" in str(exc):
            message = str(exc)
        raise JobError(
            f"dry run of the metric on the first training example failed: {message}", field="metric_code"
        ) from None
    return UserCode(signature=signature, metric=metric.with_mode(feedback=False))
