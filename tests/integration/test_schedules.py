"""Schedules against a real Prefect server, scheduler, worker and API.

The stack's scheduler loop is 1 s (tests/integration/conftest.py), so a schedule with a
few-second interval really runs several times within a test.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from dspy_service.testing.local_lm import make_arithmetic_dataset
from tests.support.payloads import job_payload
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration

TERMINAL = {"success", "failed", "cancelled"}
ACTIVE = {"pending", "validating", "running"}
# Labeled few-shot with k=0: the zero-shot program (the local LM's weakest); a fast compile.
WEAK = {"optimizer_name": "labeled_few_shot", "optimizer_kwargs": {"k": 0}}
# Bootstrapped demos raise the local LM's accuracy from ~30 % to ~78 %.
STRONG = {"optimizer_name": "bootstrap", "optimizer_kwargs": {"max_bootstrapped_demos": 4, "max_labeled_demos": 0}}


def schedule_payload(lm_url: str, **overrides):
    payload = job_payload(lm_url, rows=20, **WEAK)
    payload.update(overrides)
    return payload


def create_schedule(stack, payload) -> dict:
    response = stack.api.post("/schedules", json=payload)
    assert response.status_code == 201, response.text
    return response.json()


def schedule_runs(stack, schedule_id: str, **params) -> dict:
    response = stack.api.get(f"/schedules/{schedule_id}/runs", params={"limit": 500, **params})
    assert response.status_code == 200, response.text
    return response.json()


def prefect_schedules(stack) -> dict:
    with stack.prefect_client() as client:
        deployment = client.read_deployment_by_name("optimize-program/dspy-service")
        return {str(s.id): s for s in client.read_deployment_schedules(deployment.id)}


def run_ids(stack, schedule_id: str, **params) -> set[str]:
    return {job["job_id"] for job in schedule_runs(stack, schedule_id, **params)["items"]}


@pytest.mark.slow
def test_interval_schedule_runs_pauses_resumes_and_is_deleted(stack, local_lm):
    interval = 3
    name = f"every-{interval}s-{uuid.uuid4().hex[:6]}"
    created = create_schedule(stack, schedule_payload(local_lm.url, interval_seconds=interval, name=name))
    schedule_id = created["schedule_id"]
    assert created["active"] is True and created["interval_seconds"] == interval and created["name"] == name
    assert "sk-" not in json.dumps(created)  # the stored api key is not echoed

    # The schedule is a Prefect deployment schedule, with the job as its parameters.
    on_deployment = prefect_schedules(stack)[schedule_id]
    assert on_deployment.active and on_deployment.slug == name
    assert on_deployment.schedule.interval.total_seconds() == interval
    assert on_deployment.parameters["schedule_id"] == schedule_id
    assert on_deployment.parameters["job"]["optimizer_name"] == "labeled_few_shot"

    wait_until(lambda: len(run_ids(stack, schedule_id, status="success")) >= 2, 120, 0.5, what="two successful runs")
    job = schedule_runs(stack, schedule_id, status="success")["items"][0]
    assert job["schedule_id"] == schedule_id and job["dataset_rows"] == 20 and job["dataset_sha256"]
    # Its user's successful jobs (the schedule's future runs, up to 100 at a 3 s interval,
    # would push it off an unfiltered page).
    listed = stack.api.get("/jobs", params={"username": "tester", "status": "success", "limit": 200}).json()["items"]
    assert job["job_id"] in {j["job_id"] for j in listed}  # an ordinary job, found by its user

    # Pause: runs not yet started are dropped (runs already handed to the worker finish)
    # and no new ones appear.
    paused = stack.api.patch(f"/schedules/{schedule_id}", json={"active": False})
    assert paused.status_code == 200 and paused.json()["active"] is False
    assert prefect_schedules(stack)[schedule_id].active is False
    assert prefect_schedules(stack)[schedule_id].parameters["schedule_id"] == schedule_id  # kept
    before_window = run_ids(stack, schedule_id)
    assert len(run_ids(stack, schedule_id, status="pending")) <= 2  # at most one per pool slot, handed over
    time.sleep(2 * interval + 2)  # unpaused, the scheduler would have added runs by now
    assert run_ids(stack, schedule_id) == before_window, "a paused schedule made a new run"

    # Run now works while paused; the job is listed with the schedule's runs at once.
    manual = stack.api.post(f"/schedules/{schedule_id}/run").json()["job_id"]
    assert run_ids(stack, schedule_id) == before_window | {manual}
    stack.api.post(f"/jobs/{manual}/cancel")  # (run-now jobs run in the champion test)

    # Resume: the scheduler creates runs again and they start (their parameters bind).
    resumed = stack.api.patch(f"/schedules/{schedule_id}", json={"active": True})
    assert resumed.status_code == 200 and resumed.json()["active"] is True

    def started_after_resume():
        runs = schedule_runs(stack, schedule_id)["items"]
        return [j for j in runs if j["job_id"] not in before_window | {manual} and j["started_at"]]

    wait_until(started_after_resume, 120, 0.5, what="a scheduled run to start after resuming")

    # Delete: the Prefect schedule is gone; its jobs stay readable in /jobs.
    in_flight = set().union(*(run_ids(stack, schedule_id, status=s) for s in ACTIVE))
    deleted = stack.api.delete(f"/schedules/{schedule_id}")
    assert deleted.status_code == 200 and deleted.json() == {"schedule_id": schedule_id, "deleted": True}
    assert schedule_id not in prefect_schedules(stack)
    assert stack.api.get(f"/schedules/{schedule_id}").status_code == 404
    assert stack.api.get(f"/jobs/{job['job_id']}/summary").json()["status"] == "success"
    for job_id in in_flight:  # leave no load behind for the next tests
        stack.api.post(f"/jobs/{job_id}/cancel")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def run_now_and_wait(stack, schedule_id: str) -> dict:
    started = stack.api.post(f"/schedules/{schedule_id}/run")
    assert started.status_code == 201, started.text
    assert started.json()["schedule_id"] == schedule_id
    summary = stack.wait_for_status(started.json()["job_id"], TERMINAL)
    assert summary["status"] == "success", summary
    return stack.api.get(f"/jobs/{summary['job_id']}").json()


# Nothing here depends on the database (the runs listing is covered on both by the
# interval test); three jobs in a row are worth running once.
@pytest.mark.slow
@pytest.mark.sqlite_only
def test_dataset_source_is_reread_and_the_champion_gate_decides(stack, local_lm, tmp_path):
    source = tmp_path / "arithmetic.jsonl"
    write_jsonl(source, make_arithmetic_dataset(30, seed=11))
    payload = schedule_payload(local_lm.url, cron="0 3 * * *", timezone="Europe/Berlin", active=False,
                               dataset_source=str(source))
    del payload["dataset"]
    created = create_schedule(stack, payload)
    schedule_id = created["schedule_id"]
    assert created["dataset_source"] == str(source) and created["cron"] == "0 3 * * *" and not created["active"]
    assert stack.api.get(f"/schedules/{schedule_id}/champion").status_code == 404

    # Run 1 (zero-shot program): the first successful run becomes champion.
    first = run_now_and_wait(stack, schedule_id)
    assert first["schedule_id"] == schedule_id
    decision = first["result"]["details"]["champion"]
    assert decision["promoted"] is True and decision["champion_job_id"] is None

    # The file grows; the payload switches to an optimizer that adds demos.
    write_jsonl(source, make_arithmetic_dataset(40, seed=12))
    patched = stack.api.patch(f"/schedules/{schedule_id}", json=STRONG)
    assert patched.status_code == 200, patched.text
    assert patched.json()["job"]["optimizer_name"] == "bootstrap"
    assert patched.json()["champion"]["job_id"] == first["job_id"]
    second = run_now_and_wait(stack, schedule_id)
    decision = second["result"]["details"]["champion"]
    assert decision["champion_job_id"] == first["job_id"]
    assert decision["challenger_score"] > decision["champion_score"], decision
    assert decision["promoted"] is True, decision

    # Fresh data at every run: row counts and content hashes differ.
    first_summary = stack.api.get(f"/jobs/{first['job_id']}/summary").json()
    second_summary = stack.api.get(f"/jobs/{second['job_id']}/summary").json()
    assert (first_summary["dataset_rows"], second_summary["dataset_rows"]) == (30, 40)
    assert first["result"]["details"]["dataset_rows"] == 30 and second["result"]["details"]["dataset_rows"] == 40
    assert first_summary["dataset_sha256"] == first["result"]["details"]["dataset_sha256"]
    assert first_summary["dataset_sha256"] != second_summary["dataset_sha256"]

    # Run 3, back to zero-shot: it cannot beat the champion re-scored on its own test split.
    assert stack.api.patch(f"/schedules/{schedule_id}", json=WEAK).status_code == 200
    third = run_now_and_wait(stack, schedule_id)
    decision = third["result"]["details"]["champion"]
    assert decision["promoted"] is False, decision
    assert decision["champion_job_id"] == second["job_id"]
    assert decision["champion_score"] >= decision["challenger_score"]
    assert "does not beat" in decision["reason"]
    third_summary = stack.api.get(f"/jobs/{third['job_id']}/summary").json()
    assert third_summary["champion"] == {
        "promoted": False,
        "champion_score": decision["champion_score"],
        "previous_champion_job_id": second["job_id"],
    }

    champion = stack.api.get(f"/schedules/{schedule_id}/champion").json()
    assert champion["job"]["job_id"] == second["job_id"] and champion["job"]["champion"]["promoted"] is True
    assert champion["program_artifact"]["program_pickle_base64"]
    runs = schedule_runs(stack, schedule_id, limit=2)
    assert runs["total"] == 3 and [j["job_id"] for j in runs["items"]] == [third["job_id"], second["job_id"]]
    assert schedule_runs(stack, schedule_id, limit=2, offset=2)["items"][0]["job_id"] == first["job_id"]

    assert stack.api.delete(f"/schedules/{schedule_id}").status_code == 200
    with stack.prefect_client() as client:
        assert client.read_variable_by_name(f"dspy-champion-{schedule_id}") is None


def test_schedule_validation_like_run(stack, local_lm):
    before = len(prefect_schedules(stack))
    cases = [
        ({"interval_seconds": 60, "cron": "0 3 * * *"}, 422, "interval_seconds"),
        ({}, 422, "interval_seconds"),
        ({"cron": "every day"}, 422, "cron"),
        ({"interval_seconds": 60, "timezone": "Mars/Olympus"}, 422, "timezone"),
        ({"interval_seconds": 60, "dataset_source": "/data/x.csv"}, 422, "dataset"),
        ({"interval_seconds": 60, "module_name": "transformer"}, 400, "unknown module 'transformer'"),
    ]
    for overrides, status, expected in cases:
        response = stack.api.post("/schedules", json=schedule_payload(local_lm.url, **overrides))
        assert response.status_code == status, (overrides, response.text)
        body = response.json()
        assert expected in (body["detail"][0]["field"] if status == 422 else body["detail"]), body
    assert len(prefect_schedules(stack)) == before

    created = create_schedule(stack, schedule_payload(local_lm.url, interval_seconds=3600, active=False))
    schedule_id = created["schedule_id"]
    try:
        bad = stack.api.patch(f"/schedules/{schedule_id}", json={"split_fractions": {"train": 0.9, "val": 0.9}})
        assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "split_fractions"
        bad = stack.api.patch(f"/schedules/{schedule_id}", json={"column_mapping": {"inputs": {"question": "q"}}})
        assert bad.status_code == 400 and "['q']" in bad.json()["detail"]
        assert stack.api.get(f"/schedules/{schedule_id}").json()["job"] == created["job"]  # nothing changed
        assert stack.api.get(f"/schedules/{uuid.uuid4()}").status_code == 404
    finally:
        stack.api.delete(f"/schedules/{schedule_id}")
