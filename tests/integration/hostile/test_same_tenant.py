"""What the hostile tenant's own jobs still do (issue 13, acceptance): a fork bomb and a
memory bomb fail only their own job while the victim's job beside them succeeds; the
same tenant's ordinary BootstrapFewShot, MIPROv2 and GEPA jobs succeed with logs,
progress, usage and artifacts; and requests whose dataset or LM would be an internal
address get a 400 naming the field.

Jobs come from the package's one campaign (tests/support/hostile/campaign.py).
"""

from __future__ import annotations

import datetime as dt

import pytest

from flows.telemetry.artifacts import artifact_key
from tests.integration.hostile.conftest import JOB_MAX_TASKS, JOB_MEMORY_MB
from tests.support.hostile.campaign import ORDINARY, own_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BOMBS = {
    "fork_bomb": [f"more than {JOB_MAX_TASKS} processes/threads"],
    "memory_bomb": ["ran out of memory", f"{JOB_MEMORY_MB} MB"],
}


def moment(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize("bomb", list(BOMBS))
def test_a_bomb_fails_only_its_own_job(campaign, bomb):
    summary = campaign.summary(campaign.attacker, bomb)
    assert summary["status"] == "failed", summary
    for words in BOMBS[bomb]:
        assert words in (summary["message"] or ""), summary["message"]
    beside = campaign.summary(campaign.victim, "running")
    assert beside["status"] == "success", beside
    assert moment(summary["started_at"]) < moment(beside["completed_at"]), "the bomb ran beside the victim's job"
    assert moment(beside["started_at"]) < moment(summary["completed_at"]), "the bomb ran beside the victim's job"
    assert campaign.stack.api.get("/health").status_code == 200


@pytest.mark.parametrize("optimizer", ORDINARY)
def test_the_same_tenants_ordinary_jobs_succeed(campaign, optimizer):
    client, job_id = campaign.attacker.client, campaign.attacker.jobs[optimizer]
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "success", job["message"]
    assert any(entry["logger"].startswith("dspy") for entry in job["logs"]), "dspy's logs reach the job"
    assert job["progress_events"], "progress events"
    summary = client.get(f"/jobs/{job_id}/summary").json()
    assert summary["progress_count"] > 0 and summary["log_count"] > 0, summary
    usage = job["result"]["details"]["usage"]["total"]
    assert usage["calls"] > 0 and summary["usage"]["calls"] == usage["calls"], (usage, summary["usage"])
    artifact = client.get(f"/jobs/{job_id}/artifact")
    assert artifact.status_code == 200 and artifact.json()["program_artifact"]["program_state"], artifact.text
    answer = campaign.stack.prefect.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [job_id]}}})
    keys = {a["key"] for a in answer.json()}
    assert {artifact_key(job_id, kind) for kind in ("progress", "results", "prompt")} <= keys, keys


INTERNAL = ["dataset-prefect-api", "dataset-metadata", "base-url-metadata", "base-url-database-port"]


def internal_requests(campaign) -> dict[str, tuple[str, str]]:
    """name -> (the field a 400 must name, an internal URL for it)."""
    prefect = campaign.stack.stack.config.prefect_api_url
    return {
        "dataset-prefect-api": ("dataset_source", f"{prefect}/flow_runs/{campaign.victim.jobs['finished']}"),
        "dataset-metadata": ("dataset_source", "http://169.254.169.254/latest/meta-data/x.json"),
        "base-url-metadata": ("model_config.base_url", "http://169.254.169.254/v1"),
        "base-url-database-port": ("model_config.base_url", "http://127.0.0.1:5432/v1"),
    }


@pytest.mark.parametrize("name", INTERNAL)
def test_an_internal_dataset_source_or_base_url_is_a_400(campaign, local_lm, name):
    field, url = internal_requests(campaign)[name]
    body = own_job(local_lm.url)
    if field == "dataset_source":
        del body["dataset"]
        body.update(dataset_source=url, dataset_format="json")
    else:
        body["model_config"]["base_url"] = url
    client = campaign.attacker.client
    with campaign.stack.paused_work_pool():
        answer = client.post("/run", json=body)
        if answer.status_code == 201:  # never let it run; leave no flow run behind
            job_id = answer.json()["job_id"]
            client.post(f"/jobs/{job_id}/cancel")
            campaign.stack.wait_terminal(job_id, timeout=60)
            client.delete(f"/jobs/{job_id}")
    assert answer.status_code == 400, answer.text
    assert answer.json().get("field") == field, answer.text
