"""Batch prediction on a real stack: a registered program version over 200 rows.

A real optimization job runs with the local LM (its key is a credential of the user, so
the batch job must get it the way optimization jobs do: a Secret block reference handed
to the sandboxed engine). Its program is registered through the registry store from the
test process (against the stack's Prefect server and shared storage), then
POST /programs/{name}/batch runs as a job: listed in GET /jobs, with progress events over
the rows, usage counted, and GET /jobs/{id}/artifact answering 200 JSONL lines whose
outputs are the local LM's answers. Another user gets 404; rows lacking an input field 422.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from dspy_service.program_documents import build_document
from dspy_service.program_store import ProgramStore
from dspy_service.schemas import JobSpec
from dspy_service.testing.local_lm import make_arithmetic_dataset
from tests.integration.test_job_events import read_events
from tests.support.payloads import job_payload
from tests.support.polling import wait_until
from tests.support.stack import prefect_settings

pytestmark = [pytest.mark.integration, pytest.mark.sqlite_only]

ROWS = 200


def register_program(stack, monkeypatch, owner: str, name: str, job_id: str, result: dict) -> tuple[int, dict]:
    """Register the job's program as the next version of `name` (as POST /programs would)."""
    from prefect.client.orchestration import get_client

    monkeypatch.setattr("dspy_service.program_store.get_settings", lambda: stack.stack.config.settings)
    spec = JobSpec.model_validate(stack.flow_run(job_id)["parameters"]["job"])
    document = build_document(spec, result)

    async def register() -> int:
        async with get_client() as client:
            return (await ProgramStore(client).register(owner, name, job_id, document)).version

    with prefect_settings(stack.stack):
        return asyncio.run(register()), document


def local_answers(document: dict, rows: list[dict], lm_url: str, key: str) -> list[str]:
    """What the registered program answers in this process (same LM, no cache)."""
    import dspy

    from dspy_service.batch_spec import strip_lms
    from dspy_service.client.program import build_program

    program = build_program(document, strip_lms(document["program_state"]))
    lm = dspy.LM("openai/local-arithmetic", api_base=lm_url, api_key=key, temperature=0.0, cache=False)
    with dspy.context(lm=lm):
        return [program(question=row["question"]).answer for row in rows]


def test_batch_prediction_over_200_rows(stack, local_lm, monkeypatch):
    owner = f"batch-{uuid.uuid4().hex[:6]}"
    alice = stack.add_user(owner)
    bob = stack.add_user(f"batch-other-{uuid.uuid4().hex[:6]}")
    credential = f"lm-{uuid.uuid4().hex[:6]}"
    key = f"sk-batch-{uuid.uuid4().hex}"
    assert alice.post("/credentials", json={"name": credential, "api_key": key}).status_code == 201

    payload = job_payload(local_lm.url, rows=30)
    payload.pop("username")
    payload["model_config"]["extra"] = {}
    payload["model_config"]["credential"] = credential
    submitted = alice.post("/run", json=payload)
    assert submitted.status_code == 201, submitted.text
    job_id = submitted.json()["job_id"]
    assert wait_done(alice, job_id, 120)["status"] == "success", alice.get(f"/jobs/{job_id}/logs").text
    result = alice.get(f"/jobs/{job_id}").json()["result"]
    name = f"adder-{uuid.uuid4().hex[:6]}"
    version, document = register_program(stack, monkeypatch, owner, name, job_id, result)
    assert version == 1

    rows = make_arithmetic_dataset(ROWS, seed=17)
    local_lm.reset()  # from here on, the LM's own count of calls and keys is the batch's
    batch = alice.post(f"/programs/{name}/batch", json={"dataset": rows, "num_threads": 8})
    assert batch.status_code == 201, batch.text
    body = batch.json()
    assert body["program"] == {"name": name, "version": 1} and body["status"] in {"pending", "validating", "running"}
    batch_id = body["job_id"]
    parameters = stack.flow_run(batch_id)["parameters"]
    assert key not in json.dumps(parameters), "the LM key is in the run's parameters"
    assert "program_state" not in json.dumps(parameters), "the program travels as a stored file"

    assert bob.get(f"/jobs/{batch_id}").status_code == 404
    assert bob.post(f"/programs/{name}/batch", json={"dataset": rows[:2]}).status_code == 404
    assert alice.post(f"/programs/no-such-{name}/batch", json={"dataset": rows[:2]}).status_code == 404
    bad = alice.post(f"/programs/{name}/batch", json={"dataset": [{"question": "What is 1 + 1?"}, {"q": "x"}]})
    assert bad.status_code == 422 and "question" in bad.text, bad.text

    summary = wait_done(alice, batch_id)
    assert summary["status"] == "success", alice.get(f"/jobs/{batch_id}/logs").text
    detail = alice.get(f"/jobs/{batch_id}").json()
    assert detail["kind"] == "batch" and detail["program"] == {"name": name, "version": 1}
    bars = [e["metrics"] for e in detail["progress_events"] if e["metrics"].get("stage") == "predict-rows"]
    assert bars and bars[-1]["tqdm_total"] == ROWS and bars[-1]["tqdm_n"] == ROWS, detail["progress_events"][-3:]
    assert detail["result"]["summary"]["rows"] == ROWS
    assert detail["result"]["summary"]["usage"]["calls"] + detail["result"]["summary"]["usage"]["cache_hits"] >= ROWS
    assert summary["usage"]["calls"] == local_lm.stats()["calls"] >= ROWS // 2, (summary["usage"], local_lm.stats())
    assert local_lm.authorizations() == {f"Bearer {key}"}, "the batch called the LM with the owner's credential"
    assert batch_id in {j["job_id"] for j in alice.get("/jobs", params={"limit": 500}).json()["items"]}
    assert batch_id not in {j["job_id"] for j in bob.get("/jobs", params={"limit": 500}).json()["items"]}

    artifact = alice.get(f"/jobs/{batch_id}/artifact")
    assert artifact.status_code == 200 and artifact.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in artifact.text.splitlines()]
    assert [line["row"] for line in lines] == list(range(ROWS))
    assert all(line.get("outputs", {}).get("answer") for line in lines), [x for x in lines if "error" in x][:3]
    expected = local_answers(document, rows[:20], local_lm.url, key)
    assert [line["outputs"]["answer"] for line in lines[:20]] == expected, "not the registered program's answers"
    assert key not in artifact.text and key not in json.dumps(detail)

    events = read_events(alice, batch_id)
    statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
    assert statuses[-2:] == ["running", "success"] and events[-1]["type"] == "result", statuses

    optimization_artifact = alice.get(f"/jobs/{job_id}/artifact")
    assert optimization_artifact.status_code == 200 and "program_artifact" in optimization_artifact.json()
    assert alice.delete(f"/jobs/{batch_id}").status_code == 200
    assert alice.get(f"/jobs/{batch_id}").status_code == 404

    # A dataset_source is read (and checked) by the job in its sandbox.
    source = Path(stack.stack.config.settings.home_dir).parent / f"batch-{uuid.uuid4().hex[:6]}.jsonl"
    source_rows = [{"question": row["question"]} for row in rows[:10]]
    source_rows[4] = {"query": "What is 2 + 2?"}
    source.write_text("".join(json.dumps(row) + "\n" for row in source_rows))
    from_source = alice.post(f"/programs/{name}/batch", json={"dataset_source": str(source)})
    assert from_source.status_code == 201, from_source.text
    failed = wait_done(alice, from_source.json()["job_id"], 60)
    assert failed["status"] == "failed" and "row 4" in failed["message"] and "'question'" in failed["message"], failed

    # A slow batch is cancelled like any job.
    local_lm.set_delay(300)
    try:
        slow = alice.post(
            f"/programs/{name}/batch",
            json={"dataset": make_arithmetic_dataset(40, seed=23), "num_threads": 1, "alias": "latest"},
        )
        assert slow.status_code == 201, slow.text
        slow_id = slow.json()["job_id"]
        wait_until(
            lambda: alice.get(f"/jobs/{slow_id}/summary").json()["status"] == "running",
            60,
            what="the slow batch to run",
        )
        assert alice.post(f"/jobs/{slow_id}/cancel").status_code == 200
        assert wait_done(alice, slow_id, 60)["status"] == "cancelled"
        assert alice.get(f"/jobs/{slow_id}/artifact").status_code == 404
    finally:
        local_lm.set_delay(0)


def wait_done(client, job_id: str, timeout: float = 90) -> dict:
    last: dict = {}

    def done():
        last.update(client.get(f"/jobs/{job_id}/summary").json())
        return dict(last) if last.get("status") in {"success", "failed", "cancelled"} else None

    return wait_until(done, timeout, what=lambda: f"batch job {job_id} to end: {last}")
