"""Sweeps on a real stack (Prefect server, worker, sandboxed jobs, real DSPy, the local LM,
whose own per-model count is the check): a 2 models × 2 optimizers sweep is four ordinary
jobs nested under the sweep's parent flow run, with a leaderboard; each model's baseline is
evaluated once; cancelling the sweep cancels its running jobs; another user sees none of
it; a grid the service will not run is a 400.

The models' names are the test's own (the LM server counts per model) and the key is one
fresh key (one cold per-tenant cache), so every call the jobs pay reaches the LM."""

from __future__ import annotations

import uuid

import pytest

from tests.support.payloads import job_payload, payload_led_by, tenant_model
from tests.support.polling import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.sqlite_only]

TEST_ROWS = 12  # payload_led_by: 40 rows, unshuffled, 20 train / 8 val / 12 test
EASY_LEAD = 4  # BootstrapFewShot's default 4 bootstrapped demos: 4 compile calls, all correct


def calls_of(local_lm, name: str) -> int:
    return local_lm.stats()["by_model"].get(name, {}).get("calls", 0)


def wait_sweep(stack, sweep_id: str, statuses: set[str], timeout: float = 120) -> dict:
    last: dict = {}

    def reached():
        last.update(stack.api.get(f"/sweeps/{sweep_id}").json())
        return dict(last) if last.get("status") in statuses else None

    return wait_until(reached, timeout, 0.5, what=lambda: f"sweep {sweep_id} in {statuses}: {last}")


def test_a_2x2_sweep_is_four_jobs_with_a_leaderboard_and_one_baseline_per_model(stack, local_lm):
    base = payload_led_by(local_lm.url, easy=True, count=EASY_LEAD, optimizer_kwargs={})
    tenant = tenant_model(local_lm.url)
    names = [f"local-sweep-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    models = [{**tenant, "name": f"openai/{name}"} for name in names]
    answer = stack.api.post("/sweeps", json={
        "base": base, "grid": {"model_config": models, "optimizer_name": ["bootstrap", "labeled_few_shot"]},
    })
    assert answer.status_code == 201, answer.text
    created = answer.json()
    assert created["status"] == "running" and len(created["cells"]) == 4, created
    assert tenant["extra"]["api_key"] not in answer.text  # model configs are shown redacted

    sweep = wait_sweep(stack, created["sweep_id"], {"success", "failed", "cancelled"})
    assert sweep["status"] == "success", sweep
    cells = sweep["cells"]
    assert [(c["parameters"]["model_config"]["name"], c["parameters"]["optimizer_name"]) for c in cells] == [
        (m["name"], o) for m in models for o in ("bootstrap", "labeled_few_shot")
    ]
    for cell in cells:
        assert cell["status"] == "success" and cell["optimized_test_metric"] is not None, cell
        assert cell["tokens"] > 0 and cell["seconds_per_example"] > 0 and isinstance(cell["pareto"], bool), cell
        job = stack.api.get(f"/jobs/{cell['job_id']}")
        assert job.status_code == 200 and job.json()["status"] == "success", job.text
    assert any(c["pareto"] for c in cells) and sweep["pareto_cost"] == "tokens"

    summaries = [stack.api.get(f"/jobs/{c['job_id']}/summary").json() for c in cells]
    for model, name in enumerate(names):
        first, second = summaries[2 * model], summaries[2 * model + 1]
        # The first cell of a model scores the baseline, the second shows that score and pays none of it.
        assert first["baseline_test_metric"] is not None and second["baseline_test_metric"] is None
        assert cells[2 * model + 1]["baseline_test_metric"] == first["baseline_test_metric"]
        paid = first["usage"]["calls"] + second["usage"]["calls"]
        # bootstrap: 4 compile calls + baseline + optimized; labeled: optimized only (no compile call).
        assert calls_of(local_lm, name) == paid == EASY_LEAD + 3 * TEST_ROWS, (name, local_lm.stats()["by_model"])

    # The Prefect UI's nesting: each job's parent task run is a task run of the sweep's flow run.
    parent = stack.flow_run(created["sweep_id"])
    assert parent["state_type"] == "COMPLETED", parent["state"]
    for cell in cells:
        task_run_id = stack.flow_run(cell["job_id"])["parent_task_run_id"]
        task_run = stack.prefect.get(f"/task_runs/{task_run_id}").json()
        assert task_run["flow_run_id"] == created["sweep_id"], task_run
    listed = stack.api.get("/sweeps").json()["items"]
    assert created["sweep_id"] in [s["sweep_id"] for s in listed]


def test_cancelling_a_sweep_cancels_its_running_jobs_and_no_one_else_sees_it(stack, local_lm):
    local_lm.set_delay(800)  # each job takes long enough to be running when the sweep is cancelled
    try:
        base = job_payload(local_lm.url, rows=60, model_config=tenant_model(local_lm.url))
        grid = {"optimizer_kwargs": [{"max_bootstrapped_demos": 4}, {"max_bootstrapped_demos": 3}]}
        answer = stack.api.post("/sweeps", json={"base": base, "grid": grid})
        assert answer.status_code == 201, answer.text
        sweep_id = answer.json()["sweep_id"]
        job_ids = [c["job_id"] for c in answer.json()["cells"]]
        stack.wait_for_status(job_ids[0], {"running", "validating"}, timeout=60)

        other = stack.add_user(f"other-{uuid.uuid4().hex[:6]}")
        assert other.get(f"/sweeps/{sweep_id}").status_code == 404
        assert other.post(f"/sweeps/{sweep_id}/cancel").status_code == 404
        assert other.get(f"/jobs/{job_ids[0]}").status_code == 404
        assert sweep_id not in [s["sweep_id"] for s in other.get("/sweeps").json()["items"]]

        cancelled = stack.api.post(f"/sweeps/{sweep_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        for job_id in job_ids:
            stack.wait_state(job_id, {"CANCELLED"}, timeout=60)
        sweep = wait_sweep(stack, sweep_id, {"cancelled"}, timeout=30)
        assert [c["status"] for c in sweep["cells"]] == ["cancelled", "cancelled"], sweep
        assert stack.api.post(f"/sweeps/{sweep_id}/cancel").status_code == 409
    finally:
        local_lm.set_delay(0)


def test_a_grid_the_service_will_not_run_is_a_400_and_creates_nothing(stack, local_lm):
    base = job_payload(local_lm.url, rows=20)
    before = len(stack.api.get("/sweeps").json()["items"])
    empty = stack.api.post("/sweeps", json={"base": base, "grid": {"optimizer_name": []}})
    assert empty.status_code == 400 and empty.json()["field"] == "grid.optimizer_name", empty.text
    many = stack.api.post("/sweeps", json={"base": base, "grid": {"optimizer_kwargs": [{}] * 51}})
    assert many.status_code == 400 and many.json()["field"] == "grid", many.text
    assert "at most 50" in many.json()["detail"]
    zero = stack.api.post("/sweeps", json={"base": base, "grid": {"optimizer_name": ["bootstrap"]},
                                           "budget": {"max_lm_calls": 0}})
    assert zero.status_code == 422 and zero.json()["detail"][0]["field"] == "budget.max_lm_calls", zero.text
    assert len(stack.api.get("/sweeps").json()["items"]) == before
