"""A job's engine reaches Prefect only through its job-scoped proxy, and the proxy lets it
do its job and nothing else (issue 13, item 2).

Real stack (SQLite only: the proxy does not depend on the database). Jobs are submitted
while the work pool is paused, so no worker takes them; the test runs the real engine
(`python -m prefect.engine`) itself, the way the sandbox will: its PREFECT_API_URL is a
TCP forwarder (deployments/runtime/unix_forward.py) in front of the proxy's Unix socket,
with no Prefect auth string and no database URL in its environment. The provider key
comes from the environment, as the supervisor's credential file will hand it over: the
engine may not read Secret blocks.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect as websocket_connect

from deployments.prefect_auth import auth_headers
from deployments.runtime.env import engine_environment
from deployments.runtime.prefect_proxy import PrefectProxy
from deployments.runtime.prefect_scope import JobScope
from deployments.runtime.unix_forward import TcpToUnixForwarder
from dspy_service.contract import SANDBOXED_ENV, artifact_key, champion_variable
from tests.support.payloads import STAGES, job_payload, light_optimizer_payload, model_config
from tests.support.polling import wait_until
from tests.support.result_storage import use_local_result_storage

pytestmark = [pytest.mark.integration, pytest.mark.sqlite_only]

PROVIDER_KEY = f"sk-proxy-test-{uuid.uuid4().hex}"
# The engine's environment leaves these out: it reaches the server through the proxy only.
NOT_FOR_THE_ENGINE = ("PREFECT_API_AUTH_STRING", "PREFECT_API_KEY", "PREFECT_API_DATABASE_", "PREFECT_SERVER_")


@dataclass
class ProxyFront:
    """A job's proxy and the TCP URL the engine is given; what the proxy denied."""

    api_url: str
    scope: JobScope
    denials: list[str] = field(default_factory=list)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, timeout=30)

    def denied(self, words: str) -> bool:
        return any(words in denial for denial in self.denials)


@contextlib.contextmanager
def job_proxy(stack, job_id: str, tmp_path: Path) -> Iterator[ProxyFront]:
    scope = JobScope.of_flow_run(stack.flow_run(job_id))
    front = ProxyFront("", scope)
    proxy = PrefectProxy(tmp_path / "run" / "prefect.sock", stack.stack.config.prefect_api_url,
                         auth_headers(stack.stack.prefect_auth), scope, front.denials.append)
    proxy.start()
    forwarder = TcpToUnixForwarder(proxy.socket_path)
    try:
        forwarder.start()
        front.api_url = f"{forwarder.url}/api"
        yield front
    finally:
        forwarder.close()
        proxy.close()


def run_engine(stack, job_id: str, front: ProxyFront, workdir: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in engine_environment(stack.env).items() if not k.startswith(NOT_FOR_THE_ENGINE)}
    env.update(PREFECT_API_URL=front.api_url, PREFECT__FLOW_RUN_ID=job_id, OPENAI_API_KEY=PROVIDER_KEY)
    env[SANDBOXED_ENV] = "1"
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "prefect.engine"], env=env, cwd=workdir, capture_output=True,
                          text=True, timeout=300)


def keyless_job(lm_url: str, **overrides) -> dict:
    payload = job_payload(lm_url, **overrides)
    payload["model_config"] = {**model_config(lm_url), "extra": {}}
    return payload


def run_job_through_proxy(stack, job_id: str, tmp_path: Path) -> tuple[ProxyFront, dict]:
    with job_proxy(stack, job_id, tmp_path / job_id) as front:
        engine = run_engine(stack, job_id, front, tmp_path / job_id / "work")
    assert engine.returncode == 0, engine.stdout[-4000:] + engine.stderr[-4000:]
    return front, stack.api.get(f"/jobs/{job_id}").json()


def task_runs(stack, job_id: str) -> list[dict]:
    body = {"task_runs": {"flow_run_id": {"any_": [job_id]}}, "limit": 50}
    return stack.prefect.post("/task_runs/filter", json=body).json()


def artifacts(stack, job_id: str) -> dict[str, dict]:
    body = {"artifacts": {"flow_run_id": {"any_": [job_id]}}, "limit": 50}
    return {a["key"]: a for a in stack.prefect.post("/artifacts/filter", json=body).json()}


@pytest.mark.parametrize("optimizer", ["bootstrap", "gepa", "miprov2"])
def test_a_job_runs_through_its_proxy_like_any_job(stack, local_lm, tmp_path, optimizer):
    payload = keyless_job(local_lm.url)
    if optimizer != "bootstrap":
        payload = light_optimizer_payload(local_lm.url, optimizer)
        for key in ("model_config", "reflection_model_config"):
            if payload.get(key):
                payload[key]["extra"] = {}
    with stack.paused_work_pool():
        job_id = stack.submit(payload)
        local_lm.reset()
        front, job = run_job_through_proxy(stack, job_id, tmp_path)

    assert job["status"] == "success", job["message"]
    assert front.denials == [], "the engine of an ordinary job needs nothing the proxy denies"
    assert f"Bearer {PROVIDER_KEY}" in local_lm.authorizations(), "the job really called the LM"
    result = job["result"]
    assert result["optimized_test_metric"] is not None and result["program_artifact"]["program_state"]
    assert result["details"]["usage"]["total"]["calls"] > 0
    assert job["logs"] and any(entry["logger"].startswith("dspy.") for entry in job["logs"]), "dspy logs arrived"
    assert job["progress_events"], "progress events arrived (logs through the proxy)"
    summary = stack.api.get(f"/jobs/{job_id}/summary").json()
    assert summary["progress_count"] > 0 and summary["usage"]["calls"] > 0, "progress labels arrived"
    assert summary["baseline_test_metric"] is not None

    recorded = task_runs(stack, job_id)  # created from the engine's events, relayed by the proxy
    assert sorted(r["name"] for r in recorded) == sorted(STAGES)
    assert all(r["state_type"] == "COMPLETED" for r in recorded)
    keys = artifacts(stack, job_id)
    assert {artifact_key(job_id, kind) for kind in ("progress", "results", "prompt")} <= keys.keys()
    assert float(keys[artifact_key(job_id, "progress")]["data"]) == 100.0, "the progress artifact was updated"


def hostile_requests(front: ProxyFront, victim: dict, deployment: dict, secret_block: str) -> dict[str, httpx.Response]:
    victim_id = victim["id"]
    create = {"flow_id": deployment["flow_id"], "deployment_id": deployment["id"], "parameters": victim["parameters"],
              "state": {"type": "SCHEDULED"}}
    command = {"command": "sh -c 'touch /tmp/owned'"}
    with front.client() as api:
        return {
            "read another run": api.get(f"/flow_runs/{victim_id}"),
            "filter flow runs": api.post("/flow_runs/filter", json={}),
            "create a flow run": api.post("/flow_runs/", json=create),
            "create a flow run with a command": api.post("/flow_runs/", json={**create, "job_variables": command}),
            "create a run of the deployment": api.post(f"/deployments/{deployment['id']}/create_flow_run", json={}),
            "create a run of the deployment with a command": api.post(
                f"/deployments/{deployment['id']}/create_flow_run", json={"job_variables": command}),
            "set a Variable": api.post("/variables/", json={"name": "dspy-user-intruder", "value": {"admin": True}}),
            "read a Secret block": api.get(f"/block_types/slug/secret/block_documents/name/{secret_block}",
                                           params={"include_secrets": "true"}),
            "cancel another run": api.post(f"/flow_runs/{victim_id}/set_state",
                                           json={"state": {"type": "CANCELLING"}, "force": True}),
            "delete another run": api.delete(f"/flow_runs/{victim_id}"),
            "log into another run": api.post("/logs/", json=[{"name": "x", "level": 20, "message": "hi",
                                                              "timestamp": "2026-01-01T00:00:00Z",
                                                              "flow_run_id": victim_id}]),
        }


def send_events(front: ProxyFront, events: list[dict]) -> None:
    """Send `events` over the proxy's /api/events/in the way Prefect's client does."""
    url = front.api_url.replace("http", "ws", 1) + "/events/in"
    with websocket_connect(url, subprotocols=["prefect"]) as socket:
        socket.send(json.dumps({"type": "auth", "token": None}))
        assert json.loads(socket.recv(timeout=10))["type"] == "auth_success"
        for event in events:
            socket.send(json.dumps(event))
        socket.ping().wait(10)


def heartbeat(run_id: str) -> dict:
    now = dt.datetime.now(dt.UTC).isoformat()
    return {"id": str(uuid.uuid4()), "occurred": now, "event": "prefect.flow-run.heartbeat",
            "resource": {"prefect.resource.id": f"prefect.flow-run.{run_id}"}, "related": [], "payload": {}}


def event_recorded(stack, event_id: str) -> bool:
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    body = {"filter": {"id": {"id": [event_id]}, "occurred": {"since": since}}, "limit": 1}
    return bool(stack.prefect.post("/events/filter", json=body).json()["events"])


def test_hostile_requests_through_the_same_front_are_denied_and_reported(stack, local_lm, tmp_path):
    deployment = stack.prefect.get(f"/deployments/name/{stack.stack.config.settings.deployment_full_name}").json()
    with stack.paused_work_pool():
        victim_id = stack.submit(job_payload(local_lm.url))  # its inline key: a Secret block
        job_id = stack.submit(keyless_job(local_lm.url))
        victim = stack.flow_run(victim_id)
        secret_block = victim["parameters"]["job"]["secret_refs"]["inline_block"]
        runs_before = stack.prefect.post("/flow_runs/count", json={}).json()
        with job_proxy(stack, job_id, tmp_path) as front:
            with front.client() as api:
                assert api.get(f"/flow_runs/{job_id}").status_code == 200, "its own run: through, with auth added"
            assert httpx.get(f"{stack.stack.config.prefect_api_url}/flow_runs/{job_id}").status_code == 401
            answers = hostile_requests(front, victim, deployment, secret_block)
            own, foreign = heartbeat(job_id), heartbeat(victim_id)
            send_events(front, [foreign, own])
        assert stack.prefect.post("/flow_runs/count", json={}).json() == runs_before, "no run was created"
        assert stack.flow_run(victim_id)["state_type"] == "SCHEDULED", "the victim was neither cancelled nor deleted"
        stack.api.post(f"/jobs/{job_id}/cancel")
        stack.api.post(f"/jobs/{victim_id}/cancel")

    for attempt, answer in answers.items():
        assert answer.status_code == 403, f"{attempt}: {answer.status_code} {answer.text}"
        assert answer.json()["detail"].startswith("sandbox: "), attempt
    assert stack.prefect.get("/variables/name/dspy-user-intruder").status_code == 404
    for reason in ("not this job's flow run", "a job cannot list or filter", "a job cannot create flow runs",
                   "only a run of a schedule may use the champion's Variable", "blocks (Secrets, credentials)",
                   "a job cannot delete anything", "log entries of another flow run",
                   "dropped event prefect.flow-run.heartbeat (an event about another flow run)"):
        assert front.denied(reason), (reason, front.denials)
    assert len(front.denials) == len(set(front.denials)), "each denied request is reported once"
    wait_until(lambda: event_recorded(stack, own["id"]), 60, 0.5, what="the job's own event to be recorded")
    assert not event_recorded(stack, foreign["id"]), "the event about another run was dropped"


def test_the_champion_gate_of_a_sandboxed_run_reads_the_champion_through_the_proxy(
    stack, local_lm, tmp_path, monkeypatch
):
    # The proxy reads results where its supervisor would: the stack's result storage.
    use_local_result_storage(monkeypatch, Path(stack.env["PREFECT_LOCAL_STORAGE_PATH"]))
    payload = keyless_job(local_lm.url, rows=20, optimizer_name="labeled_few_shot", optimizer_kwargs={"k": 0})
    created = stack.api.post("/schedules", json={**payload, "cron": "0 3 * * *", "active": False})
    assert created.status_code == 201, created.text
    schedule_id = created.json()["schedule_id"]
    with stack.paused_work_pool():
        first_id = stack.api.post(f"/schedules/{schedule_id}/run").json()["job_id"]
        front, first = run_job_through_proxy(stack, first_id, tmp_path)
        assert first["status"] == "success" and first["result"]["details"]["champion"]["promoted"], first["message"]
        assert front.denials == []

        second_id = stack.api.post(f"/schedules/{schedule_id}/run").json()["job_id"]
        front, second = run_job_through_proxy(stack, second_id, tmp_path)
        assert second["status"] == "success", second["message"]
        decision = second["result"]["details"]["champion"]
        assert decision["champion_job_id"] == first_id, decision
        assert decision["champion_score"] is not None, decision  # loaded (from the proxy's answer) and re-scored
        assert front.denials == []

        # A job may record only itself as champion; and whoever wrote the pointer (a job that
        # ran unsandboxed), the proxy hands out only a completed run of the same schedule.
        other_id = stack.submit(keyless_job(local_lm.url))
        variable = f"/variables/name/{champion_variable(schedule_id)}"
        with job_proxy(stack, second_id, tmp_path / "again") as front, front.client() as api:
            pointer = api.get(variable).json()["value"]
            redirected = api.patch(variable, json={"value": {**pointer, "job_id": other_id}})
            other_variable = api.post("/variables/", json={"name": "dspy-user-intruder", "value": {"admin": True}})
            assert stack.prefect.patch(variable, json={"value": {**pointer, "job_id": other_id}}).status_code == 204
            refused = api.get("/dspy-service/champion-result")
            assert stack.prefect.patch(variable, json={"value": pointer}).status_code == 204
            served = api.get("/dspy-service/champion-result")
        stack.api.post(f"/jobs/{other_id}/cancel")
    assert redirected.status_code == 403 and front.denied("the champion may only name this job")
    assert other_variable.status_code == 403 and front.denied("not this schedule's champion variable")
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"] == f"its run is not a run of schedule {schedule_id}"
    assert served.status_code == 200 and served.json()["job_id"] == pointer["job_id"]
    assert served.json()["result"]["program_artifact"]["program_state"]
    assert stack.api.delete(f"/schedules/{schedule_id}").status_code == 200
