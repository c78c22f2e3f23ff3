"""Batch prediction's stage: predict every row with a rebuilt program (no HTTP here).

`predict_rows` is the `predict-rows` task run; `predict_all` is its pure core. Rows run
`num_threads` at a time, each under the job's LM (`dspy.context`, thread-local); one
tqdm bar over the rows is the job's progress (flows/telemetry reports it). A row that
fails records `{"row": i, "error": "<type>: <message>"}` and the others go on; only a
stop (cancel, timeout) ends the stage early, raising StopRequested.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import dspy
import tqdm

from dspy_service.contract import Stage
from dspy_service.errors import JobError
from tasks import stage
from tasks.stopping import raise_if_stopped

ERROR_CHARS = 500  # a row's error message is cut to this


def outputs_of(prediction: Any, output_fields: Sequence[str]) -> dict[str, Any]:
    """The output fields of a dspy.Prediction (every field when the list is empty), as JSON-ready values."""
    values = dict(prediction.items()) if hasattr(prediction, "items") else {}
    if output_fields:
        values = {name: values.get(name) for name in output_fields}
    return {
        name: value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        for name, value in values.items()
    }


def predict_all(
    predict_one: Callable[[Mapping[str, Any]], dict[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    num_threads: int,
    on_done: Callable[[], None] = lambda: None,
) -> list[dict[str, Any]]:
    """One result per row, in row order: `{"row", "outputs"}` or `{"row", "error"}`."""
    results: list[dict[str, Any] | None] = [None] * len(rows)

    def run(index: int) -> dict[str, Any]:
        raise_if_stopped()
        try:
            return {"row": index, "outputs": predict_one(rows[index])}
        except Exception as exc:  # noqa: BLE001 - a row's failure is that row's result
            return {"row": index, "error": f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]}

    with ThreadPoolExecutor(max_workers=max(1, num_threads), thread_name_prefix="batch-row") as pool:
        futures = {pool.submit(run, index): index for index in range(len(rows))}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            on_done()
    raise_if_stopped()
    return [r for r in results if r is not None]


@stage(Stage.PREDICT)
def predict_rows(
    program: Any,
    lm: Any,
    rows: Sequence[Mapping[str, Any]],
    input_fields: Sequence[str],
    output_fields: Sequence[str],
    num_threads: int,
) -> list[dict[str, Any]]:
    """Every row through `program` under `lm`, with a progress bar over the rows."""
    if not rows:
        raise JobError("the batch has no rows", field="dataset")

    def predict_one(row: Mapping[str, Any]) -> dict[str, Any]:
        inputs = {name: row[name] for name in input_fields} if input_fields else dict(row)
        with dspy.context(lm=lm):
            return outputs_of(program(**inputs), output_fields)

    bar = tqdm.tqdm(total=len(rows), desc="predict rows", unit="row")  # the module's: reported as progress
    try:
        return predict_all(predict_one, rows, num_threads, on_done=bar.update)
    finally:
        bar.close()
