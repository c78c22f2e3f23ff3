"""Hostile inputs on a real stack: a result file rewritten as a pickle, a nested-code bomb."""

from __future__ import annotations

import pytest

from tests.support.hostile_result import pickle_record
from tests.support.payloads import job_payload
from tests.support.result_storage import stored_result_path

pytestmark = pytest.mark.integration


def test_a_result_rewritten_as_a_pickle_is_refused_and_never_loaded(stack, local_lm, tmp_path):
    job_id = stack.submit(job_payload(local_lm.url, rows=20))
    # Waiting on Prefect, not the API: the API must not have read (and cached) the result yet.
    stack.wait_state(job_id, {"COMPLETED"}, timeout=180)
    path = stored_result_path(stack, job_id)
    marker = tmp_path / "the-pickle-ran"
    path.write_bytes(pickle_record(str(path), marker))

    job = stack.api.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["result"] is None
    assert job["message"].startswith("unreadable result: ") and "'pickle'" in job["message"]
    summary = stack.api.get(f"/jobs/{job_id}/summary").json()
    assert (summary["status"], summary["message"]) == ("failed", job["message"])
    artifact = stack.api.get(f"/jobs/{job_id}/artifact")
    assert artifact.status_code == 404 and "unreadable result" in artifact.json()["detail"]
    assert not marker.exists()


def test_a_nested_code_bomb_is_a_400_naming_the_field(stack, local_lm):
    bomb = "x = " + "(" * 50_000 + ")" * 50_000  # under the size cap: the parser must cope
    for field in ("signature_code", "metric_code"):
        response = stack.api.post("/run", json=job_payload(local_lm.url, rows=20, **{field: bomb}))
        assert response.status_code == 400, response.text
        assert response.json()["field"] == field
