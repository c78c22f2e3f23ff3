"""What a user watches while a job runs: progress, estimates, logs, usage, artifacts.

Real stack (SQLite only: none of this depends on the database), real GEPA and MIPROv2
against the local LM, slowed down with `set_delay` so the job is observable while it
runs. Each job runs alone, so the LM server's own counters are the job's usage.
"""

from __future__ import annotations

import uuid

import pytest

from tests.support.payloads import light_optimizer_payload
from tests.support.polling import wait_until
from tests.support.stack import TERMINAL

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.sqlite_only]


def wait_until_idle(stack, timeout: float = 120) -> None:
    def idle() -> bool:
        queue = stack.api.get("/queue").json()
        return queue["pending_jobs"] == 0 and queue["active_jobs"] == 0

    wait_until(idle, timeout, 0.5, what="the other jobs to end")


def run_alone_and_watch(stack, local_lm, payload, delay_ms: float):
    """Submit a job with the LM to itself, poll it while it runs; return (job, polls, lm stats)."""
    wait_until_idle(stack)
    # A fresh tenant (api key) has a fresh LM cache: every call of this job reaches the LM.
    tenant_key = f"sk-obs-{uuid.uuid4().hex}"
    for key in ("model_config", "reflection_model_config"):
        if payload.get(key):
            payload[key]["extra"]["api_key"] = tenant_key
    local_lm.reset()
    local_lm.set_delay(delay_ms)
    polls = []
    try:
        response = stack.api.post("/run", json=payload)
        assert response.status_code == 201, response.text
        job_id = response.json()["job_id"]

        def finished() -> bool:
            polls.append(stack.api.get(f"/jobs/{job_id}/summary").json())
            return polls[-1]["status"] in TERMINAL

        wait_until(finished, 240, 0.3, what=f"job {job_id} to end")
    finally:
        local_lm.set_delay(0)
    stats = local_lm.stats()
    job = stack.api.get(f"/jobs/{job_id}").json()
    assert job["status"] == "success", job["message"]
    return job, polls, stats


def assert_progress_while_running(polls):
    running = [p for p in polls if p["status"] == "running"]
    assert running, "the job was never seen running"
    estimates = [p["estimated_remaining"] for p in running if p["estimated_remaining"]]
    assert estimates, "estimated_remaining stayed null while the job ran"
    assert all(len(e.split(":")) == 3 for e in estimates)
    live_counts = [p["progress_count"] for p in running]
    assert max(live_counts) > 0, "progress_count grew while running"
    assert any(p["latest_metrics"].get("tqdm_desc") for p in running)
    assert any((p["usage"] or {}).get("calls") for p in running), "usage is published while running"
    assert polls[-1]["estimated_remaining"] is None, "no estimate once the job has finished"


def assert_increasing_bar(events, desc: str, minimum: int = 5):
    bar = [e["metrics"] for e in events if e["event"] == "progress" and e["metrics"].get("tqdm_desc") == desc]
    assert len(bar) >= minimum, [e["metrics"].get("tqdm_desc") for e in events]
    ns = [m["tqdm_n"] for m in bar]
    assert ns == sorted(ns) and ns[-1] > ns[0], ns
    fields = {"tqdm_total", "tqdm_n", "tqdm_elapsed", "tqdm_rate", "tqdm_remaining", "tqdm_percent", "tqdm_desc"}
    assert fields <= bar[-1].keys()
    assert bar[-1]["tqdm_total"] > 0


def assert_usage_matches_the_lm(job, summary, stats):
    usage = job["result"]["details"]["usage"]["total"]
    assert usage["calls"] == stats["calls"] > 0
    assert usage["prompt_tokens"] == stats["prompt_tokens"]
    assert usage["completion_tokens"] == stats["completion_tokens"]
    assert usage["cost"] == 0 and usage["cost_known"] is False  # the local LM has no price
    assert summary["usage"]["calls"] == stats["calls"], "the summary's usage label is the final count"


def prefect_logs(stack, job_id: str):
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with stack.prefect_client() as client:
        return client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(job_id)])))


def job_artifacts(stack, job_id: str):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with stack.prefect_client() as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(job_id)]))
        )


def test_gepa_job_reports_progress_candidates_logs_usage_and_artifacts(stack, local_lm):
    payload = light_optimizer_payload(local_lm.url, "gepa", num_threads=4)
    job, polls, stats = run_alone_and_watch(stack, local_lm, payload, delay_ms=60)
    job_id = job["job_id"]
    assert_progress_while_running(polls)
    events = job["progress_events"]
    assert_increasing_bar(events, "GEPA Optimization")
    candidates = [e["metrics"] for e in events if e["event"] == "candidate"]
    assert candidates and candidates[0]["candidate"] == 0 and candidates[0]["optimizer"] == "GEPA"
    gepa = job["result"]["optimization_metadata"]["gepa"]
    assert [c["score"] for c in candidates] == gepa["val_aggregate_scores"], "events and metadata agree"
    trajectory = job["result"]["optimization_metadata"]["score_trajectory"]
    assert trajectory[-1]["best_so_far"] == max(gepa["val_aggregate_scores"])
    assert_usage_matches_the_lm(job, polls[-1], stats)
    by_role = job["result"]["details"]["usage"]["by_role"]
    assert by_role["reflection"]["calls"] == stats["by_model"]["local-reflection"]["calls"]

    logs = prefect_logs(stack, job_id)
    dspy_info = [log for log in logs if log.name.startswith("dspy.") and log.level == 20]
    assert any("GEPA" in log.message or "Iteration" in log.message for log in dspy_info), "dspy INFO logs reach Prefect"
    assert not any("untrusted .pkl" in log.message for log in logs)
    assert job["logs"] and all(e["logger"] != "dspy_service.progress" for e in job["logs"])

    keys = {a.key: a for a in job_artifacts(stack, job_id)}
    prefix = f"job-{uuid.UUID(job_id).hex[:12]}"
    assert {f"{prefix}-progress", f"{prefix}-results", f"{prefix}-prompt"} <= keys.keys()
    assert float(keys[f"{prefix}-progress"].data) == 100.0
    assert "optimized_test_metric" in str(keys[f"{prefix}-results"].data)
    assert job["result"]["program_artifact"]["optimized_prompt"]["instructions"] in keys[f"{prefix}-prompt"].data


def test_miprov2_job_reports_trials_and_scores(stack, local_lm):
    payload = light_optimizer_payload(local_lm.url, "miprov2", num_threads=4)
    # Labels go out every 2 s: at 40 ms per call the job ran ~4 s, and under CI load every
    # publish could fall in a phase with no estimate. At 200 ms it runs ~13 s, most of it
    # inside bars that have one.
    job, polls, stats = run_alone_and_watch(stack, local_lm, payload, delay_ms=200)
    assert_progress_while_running(polls)
    events = job["progress_events"]
    trials = [e["metrics"] for e in events if e["event"] == "trial"]
    assert len(trials) >= 5
    assert [t["tqdm_n"] for t in trials] == sorted(t["tqdm_n"] for t in trials)
    assert [t["trial"] for t in trials] == list(range(1, len(trials) + 1))
    metadata = job["result"]["optimization_metadata"]
    scored = {t["trial"]: t["score"] for t in metadata["trials"]}
    assert all(scored[t["trial"]] == t["score"] for t in trials), "trial events match optimization_metadata"
    assert metadata["score_trajectory"][-1]["best_so_far"] == max(t["score"] for t in trials if t["full_eval"])
    assert any(e["metrics"].get("tqdm_desc") == "MIPROv2 bootstrapping demo sets" for e in events)
    assert_usage_matches_the_lm(job, polls[-1], stats)

    logs = prefect_logs(stack, job["job_id"])
    assert any(log.name == "dspy.teleprompt.mipro_optimizer_v2" and "Trial" in log.message for log in logs)
    assert any(log.name == "dspy.evaluate.evaluate" and log.level == 20 for log in logs)
