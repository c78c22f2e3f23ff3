"""Walk the HTTP contract against a real Prefect server, worker and API."""

from __future__ import annotations

import time
import uuid

import pytest
from prefect.client.schemas.responses import SetStateStatus
from prefect.states import Cancelled, Pending, Running

from deployments.runtime.procfs import process_gone
from tests.support.checks import assert_a_job_succeeds_with_its_result
from tests.support.payloads import job_payload
from tests.support.polling import wait_until
from tests.support.processes import engine_pid
from tests.support.stack import TERMINAL

pytestmark = pytest.mark.integration

# A change made outside this API shows within 1 s (read_model_max_age_seconds); the margin
# is the last request's own time on a loaded machine.
ELSEWHERE = 1.5

# Database-independent behaviour runs once, on the SQLite stack (`sqlite_only`): datasets
# live in shared storage, not in the database; worker liveness comes from heartbeats.


def submit(stack, payload, **kwargs):
    response = stack.api.post("/run", json=payload, **kwargs)
    assert response.status_code == 201, response.text
    return response.json()


def test_submit_run_succeed_with_result(stack, local_lm):
    assert_a_job_succeeds_with_its_result(stack, local_lm)


def test_schema_errors_are_422_naming_the_field(stack, local_lm):
    payload = job_payload(local_lm.url, split_fractions={"train": 0.5, "val": 0.5, "test": 0.5})
    response = stack.api.post("/run", json=payload)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_request"
    assert body["detail"][0]["field"] == "split_fractions"
    assert {"message", "type"} <= body["detail"][0].keys()
    missing = job_payload(local_lm.url)
    del missing["model_config"]
    assert stack.api.post("/run", json=missing).json()["detail"][0]["field"] == "model_config"


SIG = "class QA(dspy.Signature):\n    question: str = dspy.InputField()\n    answer: str = dspy.OutputField()\n"


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"signature_code": SIG + SIG.replace("QA", "QB")}, "defines 2 dspy.Signature subclasses"),
        ({"signature_code": "x = 1"}, "defines no dspy.Signature subclass"),
        ({"metric_code": "LIMIT = 3"}, "defines no metric function"),
        ({"module_name": "transformer"}, "unknown module 'transformer'"),
        ({"optimizer_name": "dspy.NotAnOptimizer"}, "cannot find optimizer"),
        ({"optimizer_kwargs": {"max_demos": 1}}, "optimizer_kwargs.max_demos"),
        ({"compile_kwargs": {"num_trials": 3}}, "compile_kwargs.num_trials"),
        ({"column_mapping": {"inputs": {"query": "question"}, "outputs": {}}}, "has no input field 'query'"),
        ({"column_mapping": {"inputs": {"question": "prompt"}, "outputs": {}}}, "has no column(s) ['prompt']"),
        ({"signature_code": "class QA(dspy.Signature:\n  pass"}, "syntax error at line 1"),
        ({"optimizer_name": "gepa", "optimizer_kwargs": {"auto": "light"}}, "needs a reflection model"),
    ],
)
def test_semantic_errors_are_400_before_queueing(stack, local_lm, overrides, expected):
    before = stack.api.get("/jobs", params={"limit": 1}).json()["total"]
    response = stack.api.post("/run", json=job_payload(local_lm.url, **overrides))
    assert response.status_code == 400, response.text
    assert expected in response.json()["detail"]
    assert stack.api.get("/jobs", params={"limit": 1}).json()["total"] == before


@pytest.mark.sqlite_only  # the API's check, the same on either database
def test_urls_the_egress_policy_denies_are_400_naming_the_field(stack, local_lm):
    """The stack allow-lists the test's local LM only: its Prefect API and metadata stay out of reach."""
    victim = f"{stack.stack.config.prefect_api_url}/flow_runs/{uuid.uuid4()}"
    cases = {
        "dataset_source": job_payload(local_lm.url, dataset=None, dataset_source=victim, dataset_format="json"),
        "model_config.base_url": job_payload("http://169.254.169.254/latest/meta-data"),
    }
    for field, payload in cases.items():
        response = stack.api.post("/run", json=payload)
        assert response.status_code == 400 and response.json()["field"] == field, response.text


def test_unknown_jobs_are_404(stack):
    for path in ("/jobs/{}", "/jobs/{}/summary", "/jobs/{}/logs", "/jobs/{}/artifact"):
        assert stack.api.get(path.format(uuid.uuid4())).status_code == 404
        assert stack.api.get(path.format("not-a-uuid")).status_code == 404
    assert stack.api.post(f"/jobs/{uuid.uuid4()}/cancel").status_code == 404
    assert stack.api.delete(f"/jobs/{uuid.uuid4()}").status_code == 404


def test_listing_filters_and_pages(stack, local_lm):
    user = f"lister-{uuid.uuid4().hex[:6]}"
    ids = [submit(stack, job_payload(local_lm.url, rows=20, username=user))["job_id"] for _ in range(3)]
    page = stack.api.get("/jobs", params={"username": user, "limit": 2}).json()
    assert page["total"] == 3 and page["limit"] == 2 and page["offset"] == 0
    assert [item["job_id"] for item in page["items"]] == ids[::-1][:2], "newest first"
    rest = stack.api.get("/jobs", params={"username": user, "limit": 2, "offset": 2}).json()
    assert [item["job_id"] for item in rest["items"]] == ids[:1]
    for job_id in ids:
        stack.wait_for_status(job_id, TERMINAL)
    done = stack.api.get("/jobs", params={"username": user, "status": "success"}).json()
    assert done["total"] == 3
    assert stack.api.get("/jobs", params={"username": user, "status": "pending"}).json()["total"] == 0
    assert stack.api.get("/jobs", params={"limit": 0}).status_code == 422
    assert stack.api.get("/jobs", params={"limit": 501}).status_code == 422
    assert stack.api.get("/jobs", params={"status": "bogus"}).status_code == 422


def test_idempotency_key_returns_the_same_job(stack, local_lm):
    key = f"idem-{uuid.uuid4()}"
    first = submit(stack, job_payload(local_lm.url, rows=20), headers={"Idempotency-Key": key})
    second = submit(stack, job_payload(local_lm.url, rows=20), headers={"Idempotency-Key": key})
    assert first["job_id"] == second["job_id"]
    stack.wait_for_status(first["job_id"], TERMINAL)


def test_cancel_pending_job_and_conflicts(stack, local_lm):
    with stack.paused_work_pool():
        job_id = submit(stack, job_payload(local_lm.url, rows=20))["job_id"]
        assert stack.api.get(f"/jobs/{job_id}/artifact").status_code == 409
        assert stack.api.delete(f"/jobs/{job_id}").status_code == 409
        response = stack.api.post(f"/jobs/{job_id}/cancel")
        assert response.status_code == 200 and response.json() == {"job_id": job_id, "status": "cancelled"}
        assert stack.api.get(f"/jobs/{job_id}/summary").json()["status"] == "cancelled"
        assert stack.api.post(f"/jobs/{job_id}/cancel").status_code == 409
    time.sleep(3)
    job = stack.api.get(f"/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["started_at"] is None, "a cancelled pending job never starts"
    assert not any("Beginning flow run" in entry["message"] for entry in job["logs"])


def test_a_cancel_landing_while_the_engine_starts_stops_the_job(stack, local_lm):
    """The user's cancel and the engine's proposal of Running race: the job's proxy checks the
    run, then forwards Running. A cancel answered 200 in between must still win (Prefect lets
    a Cancelled run go to Running, never a Cancelling one)."""
    with stack.paused_work_pool(), stack.prefect_client() as client:
        job_id = submit(stack, job_payload(local_lm.url, rows=20))["job_id"]
        run_id = uuid.UUID(job_id)
        client.set_flow_run_state(run_id, Pending())  # as the worker that took it
        assert stack.api.post(f"/jobs/{job_id}/cancel").status_code == 200
        engine = client.set_flow_run_state(run_id, Running())  # as its engine, after the proxy's check
        assert engine.status is not SetStateStatus.ACCEPT, engine
        assert stack.api.get(f"/jobs/{job_id}/summary").json()["status"] == "cancelled"
        # (no worker took it: what its worker would do, and what the API shows once done)
        client.set_flow_run_state(run_id, Cancelled(message="Flow run cancelled by worker while pending."))
        # Made straight in Prefect: the API shows it within its read model's 1 s.
        before_start = "cancelled by the user before it started"
        job = wait_until(lambda: (j := stack.api.get(f"/jobs/{job_id}").json())["message"] == before_start and j, 5,
                         0.05, what="the worker's cancel in the job's message")
        assert job["started_at"] is None, job


def test_cancel_running_job_kills_its_process(stack, local_lm):
    local_lm.set_delay(300)
    try:
        payload = job_payload(local_lm.url, rows=60, module_name="cot")
        job_id = submit(stack, payload)["job_id"]
        pid = engine_pid(stack.api, job_id, timeout=60)
        stack.wait_for_status(job_id, {"running", "validating"})
        assert stack.api.post(f"/jobs/{job_id}/cancel").status_code == 200
        wait_until(lambda: process_gone(pid), 30, 0.1, what="the job process to exit after its cancellation")
        job = stack.wait_for_status(job_id, {"cancelled"}, timeout=60)
        assert job["status"] == "cancelled"
    finally:
        local_lm.set_delay(0)
    with stack.prefect_client() as client:
        wait_until(
            lambda: client.read_flow_run(uuid.UUID(job_id)).state_name == "Cancelled", 30, 0.5, what="Cancelled"
        )
    assert stack.api.post(f"/jobs/{job_id}/cancel").status_code == 409


def test_delete_then_404(stack, local_lm):
    job_id = submit(stack, job_payload(local_lm.url, rows=20))["job_id"]
    stack.wait_for_status(job_id, TERMINAL)
    response = stack.api.delete(f"/jobs/{job_id}")
    assert response.status_code == 200 and response.json() == {"job_id": job_id, "deleted": True}
    assert stack.api.get(f"/jobs/{job_id}").status_code == 404
    assert stack.api.delete(f"/jobs/{job_id}").status_code == 404
    datasets = stack.stack.config.settings.home_dir / "storage" / "datasets"
    assert not any(job_id in p.name for p in datasets.glob("*"))


def all_prefect_logs(stack, job_id: str) -> list[dict]:
    """The run's logs straight from the Prefect server, as any other replica would read them."""
    logs: list[dict] = []
    while True:
        body = {"logs": {"flow_run_id": {"any_": [job_id]}}, "limit": 200, "offset": len(logs)}
        page = stack.prefect.post("/logs/filter", json={**body, "sort": "TIMESTAMP_ASC"}).json()
        logs.extend(page)
        if len(page) < 200:
            return logs


@pytest.mark.sqlite_only  # the cache is the API's, the same on either database
def test_finished_job_logs_are_complete_and_a_deletion_elsewhere_shows(stack, local_lm):
    """The API caches a finished job's logs, once its terminal state is log_settle_seconds
    old: lines that arrive just after the end are not lost, and a job deleted by another
    replica (here: straight in Prefect) is 404 here within a second (read_model_max_age_seconds)."""
    job_id = submit(stack, job_payload(local_lm.url, rows=20))["job_id"]
    stack.wait_for_status(job_id, TERMINAL)
    ended = time.monotonic()
    # A line written right after the end (as the worker's or the log shipper's last batch is).
    late = {"name": "late.writer", "level": 20, "message": f"late line {uuid.uuid4()}", "flow_run_id": job_id}
    late["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    assert stack.prefect.post("/logs/", json=[late]).status_code == 201
    assert any(e["message"] == late["message"] for e in stack.api.get(f"/jobs/{job_id}/logs").json())

    settle = stack.stack.config.settings.log_settle_seconds
    time.sleep(max(0.0, settle + 1 - (time.monotonic() - ended)))
    first = stack.api.get(f"/jobs/{job_id}").json()  # settled: read and cached
    cached = stack.api.get(f"/jobs/{job_id}").json()
    assert cached == first
    prefect_logs = all_prefect_logs(stack, job_id)
    assert len(first["logs"]) + len(first["progress_events"]) == len(prefect_logs)
    assert any(e["message"] == late["message"] for e in first["logs"])
    assert stack.api.get(f"/jobs/{job_id}/logs").json() == first["logs"]

    with stack.prefect_client() as client:
        client.delete_flow_run(uuid.UUID(job_id))
    assert stack.api.get(f"/jobs/{job_id}/logs").status_code == 404
    for path in ("/jobs/{}", "/jobs/{}/summary"):  # served by the read model: within 1 s
        wait_until(lambda p=path: stack.api.get(p.format(job_id)).status_code == 404, ELSEWHERE, 0.05, what=path)
    assert job_id not in [j["job_id"] for j in stack.api.get("/jobs", params={"username": "tester"}).json()["items"]]


def test_a_cancel_elsewhere_shows_within_a_second(stack, local_lm):
    """Another replica (here: Prefect directly) cancels a job this API has just shown: its
    event drops the read model's entry (at most read_model_max_age_seconds in any case)."""
    from prefect.states import Cancelled

    with stack.paused_work_pool():
        job_id = submit(stack, job_payload(local_lm.url, rows=20))["job_id"]
        assert stack.api.get(f"/jobs/{job_id}").json()["status"] == "pending"
        with stack.prefect_client() as client:
            client.set_flow_run_state(uuid.UUID(job_id), Cancelled(message="cancelled by the user"), force=True)
        for path in ("/jobs/{}", "/jobs/{}/summary"):
            wait_until(
                lambda p=path: stack.api.get(p.format(job_id)).json()["status"] == "cancelled",
                ELSEWHERE,
                0.05,
                what=path,
            )
        page = stack.api.get("/jobs", params={"username": "tester", "limit": 500}).json()
        assert next(j for j in page["items"] if j["job_id"] == job_id)["status"] == "cancelled"


@pytest.mark.sqlite_only
def test_twenty_thousand_rows(stack, local_lm):
    from dspy_service.testing.local_lm import make_arithmetic_dataset

    payload = job_payload(
        local_lm.url,
        optimizer_name="labeled_few_shot",
        optimizer_kwargs={"k": 4},
        split_fractions={"train": 0.98, "val": 0.01, "test": 0.01},
    )
    payload["dataset"] = make_arithmetic_dataset(20_000, seed=11)
    job_id = submit(stack, payload)["job_id"]
    job = stack.wait_for_status(job_id, TERMINAL, timeout=300)
    assert job["status"] == "success", job["message"]
    assert job["dataset_rows"] == 20_000


@pytest.mark.sqlite_only
def test_fifty_megabyte_dataset_is_accepted(stack, local_lm):
    payload = job_payload(local_lm.url, rows=20)
    payload["dataset"] = [
        {"question": f"What is {i % 90 + 2} + 7?", "answer": str(i % 90 + 9), "notes": "x" * 1000}
        for i in range(50_000)
    ]
    created = submit(stack, payload)
    summary = stack.api.get(f"/jobs/{created['job_id']}/summary").json()
    assert summary["dataset_rows"] == 50_000
    assert stack.api.post(f"/jobs/{created['job_id']}/cancel").status_code == 200


def test_queue_snapshot(stack):
    queue = stack.api.get("/queue").json()
    assert {"pending_jobs", "active_jobs", "worker_threads", "workers_alive"} <= queue.keys()
    assert queue["worker_threads"] == 2 and queue["workers_alive"] is True


@pytest.mark.sqlite_only
def test_health_503_when_the_worker_stops(stack):
    health = stack.api.get("/health")
    assert health.status_code == 200
    assets = health.json()["registered_assets"]
    assert "miprov2" in assets["optimizers"] and "cot" in assets["modules"]
    worker = stack.stack.workers[0]
    worker.stop()
    try:
        wait_until(lambda: stack.api.get("/health").status_code == 503, 120, 1, what="/health to say 503")
        assert stack.api.get("/queue").json()["workers_alive"] is False
    finally:
        worker.start(stack.env)
        stack.wait_healthy(timeout=60)
