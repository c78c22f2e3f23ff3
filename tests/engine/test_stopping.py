"""The cooperative stop the job's supervisor asks for (tasks/stopping.py).

The wrapper signals the engine before it kills the job's process group: from then on
the job's LMs refuse new requests, and GEPA ends its search at the next iteration
through the stop callback the compile stage adds. Here the stop is requested from inside
the metric, right after GEPA has scored its seed candidate on the validation set.
"""

from __future__ import annotations

import os
import signal

import pytest

from dspy_service.schemas import JobRequest
from tasks import stopping
from tasks.compile import compile_program
from tasks.data import load_and_split_data
from tasks.language_models import build_language_models
from tasks.user_code import load_user_code
from tests.support.payloads import job_payload, model_config
from tests.support.polling import wait_until

STOP_AFTER_SEED_EVALUATION = """
import tasks.stopping

CALLS = []

def metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
    CALLS.append(1)
    if len(CALLS) == 1 + 6:  # the dry run, then GEPA's 6 validation examples
        tasks.stopping.request_stop()
    return float(str(pred.answer).strip() == str(gold.answer).strip())
"""


@pytest.fixture(autouse=True)
def clear_stop():
    stopping.reset()
    yield
    stopping.reset()


def test_gepa_stops_at_the_next_iteration_when_asked(local_lm):
    payload = job_payload(
        local_lm.url,
        rows=30,
        optimizer_name="gepa",
        optimizer_kwargs={"max_metric_calls": 300, "num_threads": 1},
        reflection_model_config=model_config(local_lm.url),
        metric_code=STOP_AFTER_SEED_EVALUATION,
    )
    request = JobRequest.model_validate(payload)
    spec = request.spec()
    splits = load_and_split_data(spec, request.dataset)
    assert len(splits.val) == 6
    lms = build_language_models(spec)
    user_code = load_user_code(spec, splits.train[0])
    local_lm.reset()
    compiled = compile_program(spec, splits, lms, user_code)
    gepa = compiled.optimization_metadata["gepa"]
    assert gepa["total_metric_calls"] == 6, "GEPA went on after the stop request"
    assert len(gepa["val_aggregate_scores"]) == 1, "only the seed candidate was scored"
    assert local_lm.stats()["calls"] <= 6

    # Once stopping, the job's LMs send nothing more.
    with pytest.raises(stopping.JobStopped):
        lms.main("one more question?")
    assert local_lm.stats()["calls"] <= 6


def test_the_stop_signal_sets_the_flag():
    assert stopping.install_stop_handler()
    try:
        os.kill(os.getpid(), stopping.STOP_SIGNAL)
        wait_until(stopping.stop_requested, 2, 0.01, what="the stop flag")
    finally:
        signal.signal(stopping.STOP_SIGNAL, signal.SIG_DFL)
