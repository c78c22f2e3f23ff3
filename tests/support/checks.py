"""End-to-end checks that more than one suite makes against its own stack (the contract
suite on both databases, the warm-start suite on a zygote-forked engine)."""

from __future__ import annotations

import base64
import uuid

from tests.support.payloads import SECRET_KEY, STAGES, job_payload
from tests.support.stack import TERMINAL, RunningStack


def assert_a_job_succeeds_with_its_result(stack: RunningStack, local_lm) -> None:
    """Submit a job and check what a user sees: the status sequence, the result, logs,
    the artifact, and the flow run with the engine's task runs at the Prefect server."""
    response = stack.api.post("/run", json=job_payload(local_lm.url, rows=40))
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["status"] == "pending"
    assert {"job_id", "created_at", "username", "module_name", "optimizer_name"} <= created.keys()
    seen: list[str] = []
    stack.wait_for_status(created["job_id"], TERMINAL, seen=seen)
    assert seen[0] == "pending" and seen[-1] == "success", seen
    assert set(seen) <= {"pending", "validating", "running", "success"}

    job = stack.api.get(f"/jobs/{created['job_id']}").json()
    result = job["result"]
    assert result["split_counts"] == {"train": 20, "val": 8, "test": 12}
    assert result["optimized_test_metric"] >= result["baseline_test_metric"]
    assert job["dataset_rows"] == 40 and job["model_name"] == "openai/local-arithmetic"
    assert SECRET_KEY not in str(job)
    assert any(entry["logger"].startswith("dspy") for entry in job["logs"])
    assert result["run_log"]

    summary = stack.api.get(f"/jobs/{created['job_id']}/summary").json()
    assert summary["optimized_test_metric"] == result["optimized_test_metric"]
    assert summary["log_count"] > 0
    artifact = stack.api.get(f"/jobs/{created['job_id']}/artifact").json()["program_artifact"]
    assert base64.b64decode(artifact["program_pickle_base64"])

    # The job is a flow run of our deployment with the same id and the engine's task runs.
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with stack.prefect_client() as client:
        flow_run = client.read_flow_run(uuid.UUID(created["job_id"]))
        assert flow_run.state.is_completed()
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    assert {t.name for t in task_runs} == set(STAGES)
