"""No provider key readable by anyone else: keys sent inline or as a credential reach the
LM, and appear nowhere in plain text (our responses, Prefect's API, its database, the
service's home), on SQLite and PostgreSQL.

Prefect is read over its own HTTP API through `prefect`, the one helper to adapt when the
Prefect server asks for credentials.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from dspy_service.contract import credential_block
from tests.support.payloads import job_payload

pytestmark = pytest.mark.integration

DEPLOYMENT = "optimize-program/dspy-service"


def prefect(stack, method: str, path: str, **kwargs) -> httpx.Response:
    """A request to the stack's Prefect API (`path` after /api)."""
    return stack.prefect.request(method, path, **kwargs)


def canary(label: str) -> str:
    return f"sk-{label}-{uuid.uuid4().hex}"


def payload(lm_url: str, extra: dict, credential: str | None = None, **overrides) -> dict:
    body = job_payload(lm_url, rows=20, **overrides)
    body.pop("username")  # the caller's own job
    body["model_config"]["extra"] = extra
    if credential:
        body["model_config"]["credential"] = credential
    return body


def ok(response: httpx.Response, status: int = 200) -> httpx.Response:
    assert response.status_code == status, f"{response.request.method} {response.request.url}: {response.text}"
    return response


def block_exists(stack, name: str) -> bool:
    response = prefect(stack, "GET", f"/block_types/slug/secret/block_documents/name/{name}")
    assert response.status_code in (200, 404), response.text
    return response.status_code == 200


def our_responses(stack, job_ids: list[str], schedule_id: str) -> str:
    api = stack.api
    texts = [ok(api.get("/jobs", params={"limit": 500})).text, ok(api.get("/credentials")).text]
    for job_id in job_ids:
        for path in ("", "/summary", "/logs", "/artifact"):
            texts.append(ok(api.get(f"/jobs/{job_id}{path}")).text)
    for path in ("/schedules", f"/schedules/{schedule_id}", f"/schedules/{schedule_id}/runs"):
        texts.append(ok(api.get(path)).text)
    return "\n".join(texts)


def prefect_answers(stack) -> str:
    deployment = ok(prefect(stack, "GET", f"/deployments/name/{DEPLOYMENT}")).json()
    texts = [
        ok(prefect(stack, "POST", "/flow_runs/filter", json={"limit": 200})).text,
        ok(prefect(stack, "GET", f"/deployments/{deployment['id']}/schedules")).text,
        ok(prefect(stack, "POST", "/block_documents/filter", json={"limit": 200})).text,
        ok(prefect(stack, "POST", "/artifacts/filter", json={"limit": 200})).text,
        ok(prefect(stack, "POST", "/logs/filter", json={"limit": 200})).text,
        ok(prefect(stack, "POST", "/task_runs/filter", json={"limit": 200})).text,
    ]
    return "\n".join(texts)


def stored_bytes(stack) -> bytes:
    """Every file of the service's home (results, logs, the SQLite database and its WAL),
    plus `pg_dump` of the PostgreSQL database."""
    home = Path(stack.stack.config.settings.home_dir)
    blobs = [path.read_bytes() for path in home.rglob("*") if path.is_file()]
    if stack.fresh is not None:
        dump = ["pg_dump", "-h", "127.0.0.1", "-U", "postgres", "--data-only", stack.fresh.name]
        blobs.append(subprocess.run(dump, check=True, capture_output=True, timeout=120).stdout)
    return b"\n".join(blobs)


def test_keys_reach_the_lm_and_appear_nowhere_else(stack, local_lm):
    inline_key, header_key, credential_key, schedule_key = (canary(x) for x in ("inline", "header", "cred", "sched"))
    canaries = [inline_key, header_key, credential_key, schedule_key]
    name = f"prod-{uuid.uuid4().hex[:8]}"

    created = ok(stack.api.post("/credentials", json={"name": name, "api_key": credential_key}), 201).json()
    assert created["api_key_last4"] == credential_key[-4:]

    inline_job = stack.submit(
        payload(local_lm.url, {"api_key": inline_key, "headers": {"Authorization": f"Bearer {header_key}"}})
    )
    credential_job = stack.submit(payload(local_lm.url, {}, credential=name))
    # The schedule uses the credential too; its inline key wins over the credential's.
    schedule = ok(
        stack.api.post(
            "/schedules",
            json={
                **payload(local_lm.url, {"api_key": schedule_key}, credential=name),
                "interval_seconds": 3600,
                "active": False,
            },
        ),
        201,
    ).json()
    schedule_job = ok(stack.api.post(f"/schedules/{schedule['schedule_id']}/run"), 201).json()["job_id"]
    jobs = [inline_job, credential_job, schedule_job]
    for job_id in jobs:
        assert stack.wait_terminal(job_id)["status"] == "success", stack.api.get(f"/jobs/{job_id}/logs").text

    sent = local_lm.authorizations()
    assert {f"Bearer {header_key}", f"Bearer {credential_key}", f"Bearer {schedule_key}"} <= sent, (
        "each job sent its resolved key (an Authorization header wins over the api key)"
    )

    texts = {
        "our responses": our_responses(stack, jobs, schedule["schedule_id"]),
        "the Prefect API": prefect_answers(stack),
    }
    for where, text in texts.items():
        leaked = [c for c in canaries if c in text or c[-12:] in text]
        assert not leaked, f"{leaked} readable in {where}"
    stored = stored_bytes(stack)
    assert credential_block("admin", name).encode() in stored, "the scan sees the Prefect database"
    assert not [c for c in canaries if c.encode() in stored], "a key is stored in plain text"

    # Cleanup follows ownership: a job's own block goes with it, a schedule's with the schedule.
    inline_block = stack.flow_run(inline_job)["parameters"]["job"]["secret_refs"]["inline_block"]
    schedule_block = stack.flow_run(schedule_job)["parameters"]["job"]["secret_refs"]["inline_block"]
    assert block_exists(stack, inline_block) and block_exists(stack, schedule_block)
    ok(stack.api.delete(f"/jobs/{inline_job}"))
    ok(stack.api.delete(f"/jobs/{schedule_job}"))
    assert not block_exists(stack, inline_block)
    assert block_exists(stack, schedule_block), "runs of a schedule share the schedule's block"

    refused = stack.api.delete(f"/credentials/{name}")
    assert refused.status_code == 409, refused.text
    ok(stack.api.delete(f"/schedules/{schedule['schedule_id']}"))
    assert not block_exists(stack, schedule_block)
    ok(stack.api.delete(f"/credentials/{name}"))
    assert name not in stack.api.get("/credentials").text


def test_references_are_the_service_s_and_a_deleted_credential_fails_the_job_clearly(stack, local_lm):
    forged = {**payload(local_lm.url, {}), "secret_refs": {"credential_blocks": {"main": "dspy-cred-0-prod"}}}
    refused = stack.api.post("/run", json=forged)
    assert refused.status_code == 422 and refused.json()["detail"][0]["field"] == "secret_refs", refused.text
    unknown = stack.api.post("/run", json=payload(local_lm.url, {}, credential="no-such-credential"))
    assert unknown.status_code == 400 and unknown.json()["field"] == "model_config.credential", unknown.text

    name = f"temp-{uuid.uuid4().hex[:8]}"
    ok(stack.api.post("/credentials", json={"name": name, "api_key": canary("temp")}), 201)
    with stack.paused_work_pool():
        job_id = stack.submit(payload(local_lm.url, {}, credential=name))
        ok(stack.api.delete(f"/credentials/{name}"))  # no schedule uses it
    summary = stack.wait_terminal(job_id)
    assert summary["status"] == "failed" and f"credential {name!r} was deleted" in summary["message"], summary
    logs = stack.api.get(f"/jobs/{job_id}/logs").json()
    assert summary["log_count"] > 0 and logs, ("a failed job counts its log lines", summary["log_count"], len(logs))
