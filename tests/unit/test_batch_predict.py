"""The batch job's prediction core (tasks/batch.py) and its view (api/views.py), without Prefect."""

from __future__ import annotations

import threading
import time

import dspy
import pytest

from api import views
from api.status import JobStatus
from tasks import stopping
from tasks.batch import outputs_of, predict_all


def test_every_row_has_its_result_in_order_and_errors_stay_per_row():
    def predict_one(row):
        if row["x"] == 3:
            raise ValueError("bad row")
        time.sleep(0.001 * (10 - row["x"]))  # finish out of order
        return {"y": row["x"] * 2}

    done = []
    results = predict_all(predict_one, [{"x": i} for i in range(10)], num_threads=4, on_done=lambda: done.append(1))
    assert [r["row"] for r in results] == list(range(10))
    assert results[3] == {"row": 3, "error": "ValueError: bad row"}
    assert results[9] == {"row": 9, "outputs": {"y": 18}}
    assert len(done) == 10


def test_threads_really_run_rows_at_once():
    running, peak, lock = [0], [0], threading.Lock()

    def predict_one(row):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return {}

    predict_all(predict_one, [{}] * 12, num_threads=4)
    assert peak[0] == 4


def test_a_stop_ends_the_batch():
    stopping.reset()
    try:

        def predict_one(row):
            stopping.request_stop()
            return {}

        with pytest.raises(stopping.JobStopped):
            predict_all(predict_one, [{}] * 5, num_threads=1)
    finally:
        stopping.reset()


def test_outputs_are_the_output_fields_as_json_values():
    prediction = dspy.Prediction(reasoning="because", answer="4", extra=object())
    assert outputs_of(prediction, ["answer"]) == {"answer": "4"}
    assert set(outputs_of(prediction, [])) == {"reasoning", "answer", "extra"}
    assert isinstance(outputs_of(prediction, [])["extra"], str)


def test_a_batch_run_views_as_a_batch_job():
    run = {
        "id": "6f1c2b5e-0000-4000-8000-000000000001",
        "tags": ["user:alice"],
        "labels": {},
        "state_name": "Completed",
        "parameters": {
            "job": {
                "kind": "batch-predict",
                "username": "alice",
                "program": "adder",
                "version": 3,
                "model_config": {"name": "openai/x", "credential": "prod"},
            },
            "dataset_ref": {"url": "file:///tmp/x.json", "rows": 200},
        },
    }
    fields = views.common_fields(run, JobStatus.success)
    assert fields["kind"] == "batch" and fields["program"] == {"name": "adder", "version": 3}
    assert fields["username"] == "alice" and fields["dataset_rows"] == 200 and fields["model_name"] == "openai/x"
    assert views.job_spec_of(run) is None and views.program_source(run) is None
    body = views.submitted(run, JobStatus.pending)
    assert body["kind"] == "batch" and body["dataset_rows"] == 200


def test_a_batch_bar_over_the_rows_gives_the_percent_and_the_time_left():
    from flows.telemetry.progress_model import JobProgress

    progress = JobProgress(emit=lambda e: None)
    bar = progress.open_bar("predict rows", 200, stage="predict-rows")
    progress.update_bar(bar, 50, elapsed=10.0)  # 5 rows/s
    assert progress.estimated_remaining() == 30.0
    assert 3.0 < progress.percent < 30.0
    progress.update_bar(bar, 200, elapsed=40.0, final=True)
    assert progress.percent == 100.0
