"""The job-scoped Prefect proxy's policy: what the engine of one flow run may ask for.

Table-driven: every allowed call the engines of real jobs make (the discovered set), and
the calls a hostile job would try instead, each with the reason the job's log shows.
"""

from __future__ import annotations

import json
import random
import uuid

import pytest

from deployments.runtime.prefect_event_scope import event_decision, is_own_flow_run_event, own_events_filter
from deployments.runtime.prefect_scope import (
    ROUTES,
    JobObjects,
    JobScope,
    decide,
)
from dspy_service.contract import artifact_key, champion_lock, champion_variable

# Ids from a seeded generator: the tests' ids (which hold some) must be the same in every
# process that collects them (pytest-xdist's streams compare their collections).
_IDS = random.Random(20261206)


def new_id() -> str:
    return str(uuid.UUID(int=_IDS.getrandbits(128), version=4))


OWN, OTHER = new_id(), new_id()
DEPLOYMENT, FLOW, QUEUE, SCHEDULE = (new_id() for _ in range(4))
JOB = JobScope(OWN, DEPLOYMENT, FLOW, None, work_pool_name="dspy-service", work_queue_id=QUEUE)
SCHEDULED = JobScope(OWN, DEPLOYMENT, FLOW, SCHEDULE, work_pool_name="dspy-service", work_queue_id=QUEUE)
VARIABLE, LOCK = champion_variable(SCHEDULE), champion_lock(SCHEDULE)
HELD_LEASE, HELD_ARTIFACT, KNOWN_TASK_RUN = (new_id() for _ in range(3))


def objects() -> JobObjects:
    return JobObjects(artifacts={HELD_ARTIFACT}, task_runs={KNOWN_TASK_RUN}, leases={HELD_LEASE})


def ask(scope: JobScope, method: str, path: str, body=None, query: str = "", websocket: bool = False):
    raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    return decide(scope, method, path, query, raw, objects(), websocket=websocket)


def state(flow_run_id: str | None = OWN, kind: str = "RUNNING") -> dict:
    return {"state": {"type": kind, "state_details": {"flow_run_id": flow_run_id}, "data": None}, "force": False}


ALLOWED = [
    (JOB, "GET", "/api/health", None, ""),
    (JOB, "GET", "/api/admin/version", None, ""),
    (JOB, "GET", "/api/admin/storage", None, ""),
    (JOB, "GET", "/api/csrf-token", None, f"client={new_id()}"),
    (JOB, "GET", f"/api/flow_runs/{OWN}", None, ""),
    (JOB, "GET", f"/api/flow_runs/{OWN.upper()}", None, ""),
    (JOB, "GET", f"/api/flow_runs/{uuid.UUID(OWN).hex}", None, ""),
    (JOB, "PATCH", f"/api/flow_runs/{OWN}", {"flow_version": "abc", "empirical_policy": {"retries": 0}}, ""),
    (JOB, "POST", f"/api/flow_runs/{OWN}/set_state", state(), ""),
    (JOB, "POST", f"/api/flow_runs/{OWN}/set_state", state(None, "COMPLETED"), ""),
    (JOB, "PATCH", f"/api/flow_runs/{OWN}/labels", {"dspy.stage": "compile-program"}, ""),
    (JOB, "POST", "/api/flow_runs/filter",
     {"flow_runs": {"id": {"any_": [OWN]}, "state": {"type": {"any_": ["PAUSED"]}}}, "limit": 10}, ""),
    (JOB, "GET", f"/api/deployments/{DEPLOYMENT}", None, ""),
    (JOB, "GET", f"/api/flows/{FLOW}", None, ""),
    (JOB, "GET", "/api/work_pools/dspy-service", None, ""),
    (JOB, "GET", f"/api/work_queues/{QUEUE}", None, ""),
    (JOB, "POST", "/api/logs/", [{"flow_run_id": OWN}, {"flow_run_id": OWN, "task_run_id": OTHER}], ""),
    (JOB, "POST", "/api/artifacts/", {"key": artifact_key(OWN, "progress"), "flow_run_id": OWN}, ""),
    (JOB, "POST", "/api/artifacts/", {"key": None, "flow_run_id": OWN, "task_run_id": KNOWN_TASK_RUN}, ""),
    (JOB, "PATCH", f"/api/artifacts/{HELD_ARTIFACT}", {"data": 50.0, "description": "half"}, ""),
    (JOB, "POST", "/api/task_runs/", {"flow_run_id": OWN, "task_key": "k"}, ""),
    (JOB, "GET", f"/api/task_runs/{KNOWN_TASK_RUN}", None, ""),
    (JOB, "POST", f"/api/task_runs/{KNOWN_TASK_RUN}/set_state", state(None), ""),
    (SCHEDULED, "GET", f"/api/variables/name/{VARIABLE}", None, ""),
    (SCHEDULED, "POST", "/api/variables/", {"name": VARIABLE, "value": {"job_id": OWN}, "tags": []}, ""),
    (SCHEDULED, "PATCH", f"/api/variables/name/{VARIABLE}", {"value": {"job_id": OWN}}, ""),
    (SCHEDULED, "POST", "/api/v2/concurrency_limits/increment-with-lease", {"names": [LOCK], "slots": 1}, ""),
    (SCHEDULED, "POST", f"/api/v2/concurrency_limits/leases/{HELD_LEASE}/renew", {"lease_duration": 300}, ""),
    (SCHEDULED, "POST", "/api/v2/concurrency_limits/decrement-with-lease", {"lease_id": HELD_LEASE}, ""),
    (SCHEDULED, "GET", "/api/dspy-service/champion-result", None, ""),
    (SCHEDULED, "POST", "/api/dspy-service/champion-registration", {"program_artifact": {}}, ""),
]


@pytest.mark.parametrize(("scope", "method", "path", "body", "query"), ALLOWED)
def test_what_the_engine_needs_is_allowed(scope, method, path, body, query):
    decision = ask(scope, method, path, body, query)
    assert decision.allowed, decision.reason


@pytest.mark.parametrize("path", ["/api/events/in", "/api/events/out"])
def test_the_event_websockets_are_allowed_as_websockets_only(path):
    assert ask(JOB, "GET", path, websocket=True).allowed
    assert ask(JOB, "GET", path).reason == "only over a websocket"
    assert ask(JOB, "GET", f"/api/flow_runs/{OWN}", websocket=True).reason == "not a websocket route"


DENIED = [
    # other runs, through any URL
    (JOB, "GET", f"/api/flow_runs/{OTHER}", None, "not this job's flow run"),
    (JOB, "POST", f"/api/flow_runs/{OTHER}/set_state", state(OTHER, "CANCELLING"), "not this job's flow run"),
    (JOB, "PATCH", f"/api/flow_runs/{OTHER}/labels", {"x": 1}, "not this job's flow run"),
    (JOB, "POST", f"/api/flow_runs/{OWN}/set_state", state(OTHER), "a state naming another flow run"),
    (JOB, "DELETE", f"/api/flow_runs/{OTHER}", None, "a job cannot delete anything"),
    (JOB, "DELETE", f"/api/flow_runs/{OWN}", None, "a job cannot delete anything"),
    (JOB, "POST", f"/api/flow_runs/{OTHER}/resume", None, "not this job's flow run"),
    (JOB, "GET", f"/api/flow_runs/{OTHER}/graph", None, "not this job's flow run"),
    (JOB, "GET", f"/api/flow_runs/{OWN}/graph", None, "not needed by a job's engine"),
    (JOB, "GET", f"/api/flow_runs/{OWN}/../{OTHER}", None, "not a Prefect API path"),
    (JOB, "GET", f"/api/flow_runs/%2e%2e/{OTHER}", None, "not a Prefect API path"),
    (JOB, "GET", f"/api//flow_runs/{OWN}", None, "not a Prefect API path"),
    (JOB, "GET", f"/flow_runs/{OWN}", None, "not a Prefect API path"),
    (JOB, "PATCH", f"/api/flow_runs/{OWN}", {"parameters": {"job": {}}}, "only flow_version, empirical_policy"),
    (JOB, "PATCH", f"/api/flow_runs/{OWN}", {"job_variables": {"command": "sh"}}, "only flow_version"),
    # listing, filtering, creating runs
    (JOB, "POST", "/api/flow_runs/filter", {}, "a job cannot list or filter"),
    (JOB, "POST", "/api/flow_runs/filter", {"flow_runs": {"id": {"any_": [OTHER]}}}, "only its own run by id"),
    (JOB, "POST", "/api/flow_runs/filter", {"flow_runs": {"id": {"any_": [OWN, OTHER]}}}, "only its own run"),
    (JOB, "POST", "/api/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}}, "by id"),
    (JOB, "POST", "/api/flow_runs/count", {}, "a job cannot list or filter"),
    (JOB, "POST", "/api/task_runs/filter", {}, "a job cannot list or filter"),
    (JOB, "POST", "/api/logs/filter", {}, "a job cannot list or filter"),
    (JOB, "POST", "/api/flow_runs/", {"flow_id": FLOW}, "a job cannot create flow runs"),
    (JOB, "POST", f"/api/deployments/{DEPLOYMENT}/create_flow_run", {}, "a job cannot create flow runs"),
    (JOB, "POST", f"/api/deployments/{DEPLOYMENT}/create_flow_run", {"job_variables": {"command": "sh"}},
     "a job cannot create flow runs"),
    (JOB, "GET", f"/api/deployments/{OTHER}", None, "not this job's deployment"),
    (JOB, "GET", f"/api/flows/{OTHER}", None, "not this job's flow"),
    (JOB, "GET", "/api/work_pools/another-pool", None, "not this job's work pool"),
    (JOB, "PATCH", "/api/work_pools/dspy-service", {"is_paused": True}, "not needed by a job's engine"),
    # blocks: Secrets and credentials
    (JOB, "GET", "/api/block_types/slug/secret/block_documents/name/dspy-secret-x", None, "blocks"),
    (JOB, "GET", f"/api/block_documents/{OTHER}", None, "blocks"),
    (JOB, "POST", "/api/block_documents/filter", {}, "blocks"),
    # logs, artifacts and task runs of other runs
    (JOB, "POST", "/api/logs/", [{"flow_run_id": OWN}, {"flow_run_id": OTHER}], "log entries of another flow run"),
    (JOB, "POST", "/api/logs/", [{"task_run_id": OWN}], "log entries of another flow run"),
    (JOB, "POST", "/api/logs/", {"flow_run_id": OWN}, "the body must be a list of log entries"),
    (JOB, "POST", "/api/logs/", f'[{{"flow_run_id": "{OWN}", "flow_run_id": "{OTHER}"}}]'.encode(), "repeats a key"),
    (JOB, "POST", "/api/logs/", b"not json", "the body is not JSON"),
    (JOB, "POST", "/api/artifacts/", {"key": None, "flow_run_id": OTHER}, "not this job's flow run"),
    (JOB, "POST", "/api/artifacts/", {"key": artifact_key(OTHER, "results"), "flow_run_id": OWN}, "artifact keys"),
    (JOB, "PATCH", f"/api/artifacts/{OTHER}", {"data": 1}, "not an artifact of this job"),
    (JOB, "PATCH", f"/api/artifacts/{HELD_ARTIFACT}", {"flow_run_id": OTHER}, "only data, description"),
    (JOB, "DELETE", f"/api/artifacts/{HELD_ARTIFACT}", None, "a job cannot delete anything"),
    (JOB, "POST", "/api/task_runs/", {"flow_run_id": OTHER}, "not this job's flow run"),
    (JOB, "GET", f"/api/task_runs/{OTHER}", None, "not a task run of this job"),
    # Variables and concurrency limits: none for a one-off job, only the champion's for a schedule
    (JOB, "GET", f"/api/variables/name/{VARIABLE}", None, "only a run of a schedule"),
    (JOB, "GET", "/api/dspy-service/champion-result", None, "only a run of a schedule"),
    (JOB, "POST", "/api/dspy-service/champion-registration", {}, "only a run of a schedule"),
    (SCHEDULED, "POST", "/api/dspy-service/champion-registration", [1], "the body must be a JSON object"),
    (SCHEDULED, "GET", "/api/dspy-service/champion-registration", None, "not needed"),
    (JOB, "POST", "/api/v2/concurrency_limits/increment-with-lease", {"names": [LOCK]}, "only a run of a schedule"),
    (SCHEDULED, "GET", "/api/variables/name/dspy-user-admin", None, "not this schedule's champion variable"),
    (SCHEDULED, "GET", f"/api/variables/name/{champion_variable(OTHER)}", None, "not this schedule's champion"),
    (SCHEDULED, "POST", "/api/variables/", {"name": "dspy-user-admin", "value": {}}, "not this schedule's champion"),
    (SCHEDULED, "POST", "/api/variables/", {"value": {}}, "not this schedule's champion variable"),
    (SCHEDULED, "PATCH", f"/api/variables/name/{VARIABLE}", {"name": "other", "value": 1}, "not this schedule's"),
    (SCHEDULED, "PATCH", f"/api/variables/name/{VARIABLE}", {"value": {"job_id": OTHER}}, "may only name this job"),
    (SCHEDULED, "PATCH", f"/api/variables/name/{VARIABLE}", {"tags": []}, "the champion may only name this job"),
    (SCHEDULED, "POST", "/api/variables/", {"name": VARIABLE, "value": {"job_id": OTHER}}, "may only name this job"),
    (SCHEDULED, "POST", "/api/variables/filter", {}, "a job cannot list or filter"),
    (SCHEDULED, "DELETE", f"/api/variables/name/{VARIABLE}", None, "a job cannot delete anything"),
    (SCHEDULED, "POST", "/api/v2/concurrency_limits/increment-with-lease", {"names": [champion_lock(OTHER)]},
     "not this schedule's champion lock"),
    (SCHEDULED, "POST", "/api/v2/concurrency_limits/increment-with-lease", {"names": [LOCK, "other"]},
     "not this schedule's champion lock"),
    (SCHEDULED, "POST", "/api/v2/concurrency_limits/", {"name": "x", "limit": 1}, "not this schedule's champion lock"),
    (SCHEDULED, "POST", "/api/v2/concurrency_limits/decrement-with-lease", {"lease_id": OTHER}, "not a lease"),
    (SCHEDULED, "POST", f"/api/v2/concurrency_limits/leases/{OTHER}/renew", {}, "not a lease this job holds"),
    # the rest of the API
    (JOB, "GET", "/api/admin/settings", None, "not needed by a job's engine"),
    (JOB, "PUT", "/api/admin/storage", {"default_result_storage_block_id": OTHER}, "not needed by a job's engine"),
    (JOB, "POST", "/api/events", [], "not needed by a job's engine"),
    (JOB, "POST", "/api/automations/", {}, "not needed by a job's engine"),
]


@pytest.mark.parametrize(("scope", "method", "path", "body", "reason"), DENIED)
def test_everything_else_is_denied_with_a_reason(scope, method, path, body, reason):
    decision = ask(scope, method, path, body)
    assert not decision.allowed
    assert reason in decision.reason


def test_query_parameters_only_where_the_engine_sends_them():
    assert ask(JOB, "GET", f"/api/flow_runs/{OWN}", query="include=x").reason == "query parameters are not allowed here"
    assert ask(JOB, "GET", "/api/csrf-token", query="client=abc").allowed


def test_ids_become_the_jobs_when_the_upstream_created_them():
    job = JobObjects()
    artifact, lease = str(uuid.uuid4()), str(uuid.uuid4())
    patch = (JOB, "PATCH", f"/api/artifacts/{artifact}", "", b'{"data": 1}')
    assert not decide(*patch, job).allowed
    job.remember("POST", "/api/artifacts/", 422, json.dumps({"id": artifact}).encode())
    job.remember("POST", f"/api/flow_runs/{OWN}/set_state", 201, json.dumps({"id": artifact}).encode())
    assert not decide(*patch, job).allowed, "only a successful create of an artifact counts"
    job.remember("POST", "/api/artifacts/", 201, json.dumps({"id": artifact}).encode())
    assert decide(*patch, job).allowed
    release = json.dumps({"lease_id": lease}).encode()
    job.remember("POST", "/api/v2/concurrency_limits/increment-with-lease", 200, release)
    assert decide(SCHEDULED, "POST", "/api/v2/concurrency_limits/decrement-with-lease", "", release, job).allowed


def test_the_scope_of_a_flow_run_as_the_api_returns_it():
    run = {"id": OWN, "deployment_id": DEPLOYMENT, "flow_id": FLOW, "work_pool_name": "dspy-service",
           "work_queue_id": QUEUE, "parameters": {"job": {}, "schedule_id": SCHEDULE}}
    assert JobScope.of_flow_run(run) == SCHEDULED
    assert JobScope.of_flow_run({**run, "parameters": {"job": {}}}) == JOB
    assert JobScope.of_flow_run({"id": OWN, "parameters": {"schedule_id": 5}}).schedule_id is None


def test_every_route_says_what_it_is_for():
    assert all(route.what for route in ROUTES)
    assert len({(route.method, route.template) for route in ROUTES}) == len(ROUTES)


# -- events -------------------------------------------------------------------------------------
def related(flow_run: str = OWN, role: str = "flow-run") -> list[dict]:
    return [
        {"prefect.resource.id": f"prefect.flow-run.{flow_run}", "prefect.resource.role": role},
        {"prefect.resource.id": f"prefect.deployment.{DEPLOYMENT}", "prefect.resource.role": "deployment"},
        {"prefect.resource.id": "prefect.tag.dspy-service", "prefect.resource.role": "tag"},
    ]


def event(name: str, resource: str, related_resources=None, **extra) -> dict:
    body = {"event": name, "resource": {"prefect.resource.id": resource, **extra.pop("resource_extra", {})}}
    return {**body, "related": related() if related_resources is None else related_resources, **extra}


TASK_RUN = f"prefect.task-run.{new_id()}"
EVENTS = [
    (JOB, event("prefect.flow-run.heartbeat", f"prefect.flow-run.{OWN}"), None),
    (JOB, event("prefect.task-run.Pending", TASK_RUN, payload={"task_run": {"name": "x"}}), None),
    (JOB, event("prefect.task-run.Completed", TASK_RUN), None),
    (JOB, event("prefect.artifact.created", f"prefect.artifact.{new_id()}"), None),
    (SCHEDULED, event("prefect.concurrency-limit.acquired", f"prefect.concurrency-limit.{new_id()}",
                      resource_extra={"prefect.resource.name": LOCK}), None),
    (JOB, event("prefect.flow-run.heartbeat", f"prefect.flow-run.{OTHER}"), "an event about another flow run"),
    (JOB, event("prefect.task-run.Completed", TASK_RUN, related(OTHER)), "an event about another flow run"),
    (JOB, event("prefect.task-run.Completed", TASK_RUN, related() + related(OTHER)), "about another flow run"),
    (JOB, event("prefect.task-run.Completed", TASK_RUN, related(OTHER, "parent")), "about another flow run"),
    (JOB, event("prefect.task-run.Completed", TASK_RUN, [{"prefect.resource.id": TASK_RUN,
                                                         "prefect.resource.role": "flow-run"}]),
     "an event about another flow run"),
    (JOB, event("prefect.task-run.Completed", TASK_RUN, []), "not related to this job's flow run"),
    (JOB, event("prefect.task-run.Completed", TASK_RUN, related(OWN, "parent")), "not related to this job"),
    (JOB, event("prefect.task-run.Pending", TASK_RUN, payload={"task_run": {"flow_run_id": OTHER}}),
     "another flow run's task run"),
    (JOB, event("prefect.flow-run.Cancelling", TASK_RUN), "not this job's"),
    (JOB, event("prefect.task-run.Completed", f"prefect.flow-run.{OWN}"), "not a flow-run event"),
    (JOB, event("prefect.block.secret.loaded", f"prefect.block-document.{new_id()}"), "not this job's"),
    (JOB, event("prefect.deployment.triggered", f"prefect.deployment.{DEPLOYMENT}"), "not this job's"),
    (JOB, event("prefect.concurrency-limit.acquired", f"prefect.concurrency-limit.{new_id()}",
                resource_extra={"prefect.resource.name": LOCK}), "another concurrency limit"),
    (SCHEDULED, event("prefect.concurrency-limit.acquired", f"prefect.concurrency-limit.{new_id()}",
                      resource_extra={"prefect.resource.name": "other"}), "another concurrency limit"),
    (JOB, {"type": "auth", "token": None}, "not an event"),
    (JOB, None, "not an event"),
    (JOB, {"event": "x", "resource": {}, "related": "no"}, "not an event"),
]


@pytest.mark.parametrize(("scope", "sent", "reason"), EVENTS)
def test_events_are_allowed_only_about_this_jobs_run(scope, sent, reason):
    decision = event_decision(scope, sent)
    assert decision.allowed is (reason is None), decision.reason
    if reason:
        assert reason in decision.reason


def test_allowed_task_run_events_make_the_task_run_the_jobs():
    job = JobObjects()
    job.remember_event(event("prefect.task-run.Pending", TASK_RUN))
    assert decide(JOB, "GET", f"/api/task_runs/{TASK_RUN.rpartition('.')[2]}", "", None, job).allowed


def test_the_event_subscription_is_narrowed_to_this_jobs_run():
    asked = {"type": "filter", "filter": {"event": {"name": ["prefect.flow-run.Suspended"]}, "resource": None}}
    narrowed = own_events_filter(JOB, asked)
    assert narrowed["filter"]["resource"] == {"id": [f"prefect.flow-run.{OWN}"]}
    assert narrowed["filter"]["event"] == asked["filter"]["event"]
    assert own_events_filter(JOB, {"type": "auth"}) is None
    assert is_own_flow_run_event(JOB, {"type": "event", "event": event("x", f"prefect.flow-run.{OWN}")})
    assert not is_own_flow_run_event(JOB, {"type": "event", "event": event("x", f"prefect.flow-run.{OTHER}")})
    assert not is_own_flow_run_event(JOB, {"type": "event", "event": None})


def test_registration_only_inside_the_champion_gate():
    """The proxy's registration route needs a lease of the champion lock this job took and
    has not released (the gate registers under it); the body is only the job's program."""
    route = "/api/dspy-service/champion-registration"
    body = json.dumps({"program_artifact": {}}).encode()
    outside = decide(SCHEDULED, "POST", route, "", body, JobObjects())
    assert not outside.allowed and outside.reason == "only inside the champion gate, holding the champion lock"
    assert decide(SCHEDULED, "POST", route, "", body, objects()).allowed
    assert not decide(SCHEDULED, "POST", route, "program=other", body, objects()).allowed
    # Once the gate released the lock, the lease is forgotten: no registration after the gate.
    held = objects()
    release = json.dumps({"lease_id": HELD_LEASE}).encode()
    held.remember("POST", "/api/v2/concurrency_limits/decrement-with-lease", 500, b"{}", release)
    assert decide(SCHEDULED, "POST", route, "", body, held).allowed, "a failed release keeps the lease"
    held.remember("POST", "/api/v2/concurrency_limits/decrement-with-lease", 204, b"", release)
    assert not decide(SCHEDULED, "POST", route, "", body, held).allowed
