"""Users, tokens and ownership on a real stack (SQLite and PostgreSQL).

Two users, alice and mallory, and the stack's first admin: nothing of alice's is
visible to or changeable by mallory (404 for her ids, 403 for her name in a body), bad,
revoked and rotated tokens get 401, idempotency keys are per owner, and the per-user
quotas answer 429 and 400.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from dataclasses import dataclass

import httpx
import pytest

from tests.support.payloads import job_payload
from tests.support.polling import wait_until
from tests.support.stack import RunningStack

pytestmark = pytest.mark.integration

# A fast job: labeled few-shot with k=0 compiles at once.
QUICK = {"optimizer_name": "labeled_few_shot", "optimizer_kwargs": {"k": 0}}


@dataclass
class People:
    alice: httpx.Client
    mallory: httpx.Client
    alice_name: str
    mallory_name: str


@pytest.fixture(scope="module")
def people(stack: RunningStack) -> People:
    suffix = uuid.uuid4().hex[:6]
    alice, mallory = f"alice-{suffix}", f"mallory-{suffix}"
    return People(stack.add_user(alice), stack.add_user(mallory), alice, mallory)


def own_payload(lm_url: str, **overrides) -> dict:
    """A job body without `username`: it is the caller's."""
    payload = job_payload(lm_url, rows=20, **QUICK)
    del payload["username"]
    payload.update(overrides)
    return payload


def assert_401(answer: httpx.Response) -> None:
    assert answer.status_code == 401, answer.text
    assert answer.headers["www-authenticate"] == "Bearer"
    assert answer.json()["detail"]


def test_missing_bad_revoked_and_rotated_tokens_get_401(stack):
    anonymous = stack.client()
    assert_401(anonymous.get("/jobs"))
    assert_401(anonymous.post("/run", json=own_payload("http://127.0.0.1:1")))
    assert_401(stack.client("dss.admin.not-the-token").get("/jobs"))
    assert_401(stack.client("not-even-a-token").get("/queue"))
    health = anonymous.get("/health")
    assert health.status_code == 200 and set(health.json()) == {"status", "registered_assets", "sandbox"}
    assert health.json()["sandbox"] == "on"

    name = f"temp-{uuid.uuid4().hex[:6]}"
    user = stack.add_user(name)
    assert user.get("/jobs").status_code == 200
    rotated = stack.api.post(f"/users/{name}/rotate")
    assert rotated.status_code == 200
    assert_401(user.get("/jobs"))  # the old token, at once on this replica
    renewed = stack.client(rotated.json()["token"])
    assert renewed.get("/jobs").status_code == 200
    assert stack.api.delete(f"/users/{name}").json() == {"username": name, "deleted": True}
    assert_401(renewed.get("/jobs"))
    assert stack.api.delete(f"/users/{name}").status_code == 404


def test_users_are_managed_by_admins_only(stack, people):
    assert people.alice.get("/users").status_code == 403
    assert people.alice.post("/users", json={"username": "eve"}).status_code == 403
    assert people.alice.delete(f"/users/{people.mallory_name}").status_code == 403
    listed = stack.api.get("/users").json()["items"]
    names = {u["username"]: u for u in listed}
    assert names["admin"]["admin"] is True and names[people.alice_name]["admin"] is False
    assert "token" not in str(listed) and "sha256" not in str(listed)
    assert stack.api.post("/users", json={"username": people.alice_name}).status_code == 409
    assert stack.api.post("/users", json={"username": "Not Valid"}).status_code == 422


@pytest.mark.slow
def test_nothing_of_alices_is_mallorys(stack, local_lm, people):
    alice, mallory = people.alice, people.mallory
    created = alice.post("/run", json=own_payload(local_lm.url))
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]
    assert created.json()["username"] == people.alice_name
    stack.wait_terminal(job_id)
    schedule = alice.post("/schedules", json={**own_payload(local_lm.url), "interval_seconds": 3600, "active": False})
    assert schedule.status_code == 201, schedule.text
    schedule_id = schedule.json()["schedule_id"]

    reads = [f"/jobs/{job_id}", f"/jobs/{job_id}/summary", f"/jobs/{job_id}/logs", f"/jobs/{job_id}/artifact",
             f"/schedules/{schedule_id}", f"/schedules/{schedule_id}/runs", f"/schedules/{schedule_id}/champion"]
    for path in reads:
        assert alice.get(path).status_code in (200, 404 if path.endswith("champion") else 200), path
        answer = mallory.get(path)
        assert answer.status_code == 404 and "not found" in answer.json()["detail"], (path, answer.text)
    assert mallory.post(f"/jobs/{job_id}/cancel").status_code == 404
    assert mallory.delete(f"/jobs/{job_id}").status_code == 404
    assert mallory.patch(f"/schedules/{schedule_id}", json={"metric_code": "def metric(e, p, t=None): return 1"}
                         ).status_code == 404
    assert mallory.post(f"/schedules/{schedule_id}/run").status_code == 404
    assert mallory.delete(f"/schedules/{schedule_id}").status_code == 404

    # mallory's lists do not show alice's objects, the admin's do
    assert job_id not in str(mallory.get("/jobs", params={"limit": 500}).json())
    assert schedule_id not in str(mallory.get("/schedules").json())
    assert mallory.get("/jobs", params={"username": people.alice_name}).status_code == 403
    assert [j["job_id"] for j in alice.get("/jobs").json()["items"]] == [job_id]
    assert [s["schedule_id"] for s in alice.get("/schedules").json()["items"]] == [schedule_id]
    assert job_id in str(stack.api.get("/jobs", params={"username": people.alice_name}).json())
    assert stack.api.get(f"/schedules/{schedule_id}").status_code == 200

    # everything is still alice's and intact
    assert alice.get(f"/jobs/{job_id}").json()["status"] == "success"
    assert alice.get(f"/schedules/{schedule_id}").json()["username"] == people.alice_name
    assert alice.delete(f"/schedules/{schedule_id}").status_code == 200
    assert alice.delete(f"/jobs/{job_id}").status_code == 200


def test_a_foreign_username_in_a_body_is_403(stack, local_lm, people):
    alice, mallory = people.alice, people.mallory
    for path, extra in (("/run", {}), ("/schedules", {"interval_seconds": 3600, "active": False})):
        answer = mallory.post(path, json={**own_payload(local_lm.url), "username": people.alice_name, **extra})
        assert answer.status_code == 403 and people.alice_name in answer.json()["detail"], answer.text
    schedule = mallory.post("/schedules", json={**own_payload(local_lm.url), "interval_seconds": 3600, "active": False})
    schedule_id = schedule.json()["schedule_id"]
    moved = mallory.patch(f"/schedules/{schedule_id}", json={"username": people.alice_name})
    assert moved.status_code == 403
    assert stack.api.patch(f"/schedules/{schedule_id}", json={"username": people.alice_name}).status_code == 400
    assert mallory.get(f"/schedules/{schedule_id}").json()["username"] == people.mallory_name
    assert alice.get(f"/schedules/{schedule_id}").status_code == 404
    assert mallory.delete(f"/schedules/{schedule_id}").status_code == 200

    # an admin may submit for alice: the job is then alice's
    with stack.paused_work_pool():
        for_alice = stack.api.post("/run", json={**own_payload(local_lm.url), "username": people.alice_name})
        job_id = for_alice.json()["job_id"]
        assert alice.get(f"/jobs/{job_id}").status_code == 200
        assert mallory.get(f"/jobs/{job_id}").status_code == 404
        assert alice.post(f"/jobs/{job_id}/cancel").status_code == 200
    stack.wait_terminal(job_id, timeout=60)
    assert alice.delete(f"/jobs/{job_id}").status_code == 200


def test_idempotency_keys_are_per_owner(stack, local_lm, people):
    key = {"Idempotency-Key": f"same-{uuid.uuid4().hex}"}
    with stack.paused_work_pool():
        first = people.alice.post("/run", json=own_payload(local_lm.url), headers=key).json()["job_id"]
        again = people.alice.post("/run", json=own_payload(local_lm.url), headers=key).json()["job_id"]
        other = people.mallory.post("/run", json=own_payload(local_lm.url), headers=key).json()["job_id"]
        assert first == again and other != first
        assert people.mallory.get(f"/jobs/{other}").json()["username"] == people.mallory_name
        for client, job_id in ((people.alice, first), (people.mallory, other)):
            assert client.post(f"/jobs/{job_id}/cancel").status_code == 200
    for client, job_id in ((people.alice, first), (people.mallory, other)):
        stack.wait_terminal(job_id, timeout=60)
        assert client.delete(f"/jobs/{job_id}").status_code == 200


def test_quotas_429_and_400(stack, local_lm):
    """The stack runs on the default quotas (20 active jobs, 20 schedules, 60 s)."""
    name = f"quota-{uuid.uuid4().hex[:6]}"
    user = stack.add_user(name)
    limit_jobs, limit_schedules = 20, 20
    fast = user.post("/schedules", json={**own_payload(local_lm.url), "interval_seconds": 10})
    assert fast.status_code == 400 and fast.json()["field"] == "interval_seconds", fast.text
    jobs, schedules = [], []
    try:
        with stack.paused_work_pool():
            for _ in range(limit_jobs):
                answer = user.post("/run", json=own_payload(local_lm.url))
                assert answer.status_code == 201, answer.text
                jobs.append(answer.json()["job_id"])
            over = user.post("/run", json=own_payload(local_lm.url))
            assert over.status_code == 429 and int(over.headers["retry-after"]) > 0, over.text
            exempt = stack.api.post("/run", json=own_payload(local_lm.url, username=name))  # admins are exempt
            assert exempt.status_code == 201, exempt.text
            jobs.append(exempt.json()["job_id"])
            for _ in range(limit_schedules):
                answer = user.post("/schedules", json={**own_payload(local_lm.url), "cron": "0 3 * * *",
                                                       "active": False})
                assert answer.status_code == 201, answer.text
                schedules.append(answer.json()["schedule_id"])
            over = user.post("/schedules", json={**own_payload(local_lm.url), "cron": "0 4 * * *", "active": False})
            assert over.status_code == 429 and over.headers["retry-after"], over.text
    finally:
        for schedule_id in schedules:
            user.delete(f"/schedules/{schedule_id}")
        for job_id in jobs:
            user.post(f"/jobs/{job_id}/cancel")
        for job_id in jobs:
            stack.wait_terminal(job_id, timeout=60)
            user.delete(f"/jobs/{job_id}")


@pytest.mark.sqlite_only
def test_the_users_cli_manages_tokens_the_api_accepts(stack):
    env = dict(stack.env)  # PREFECT_API_URL and the auth string of the stack's server
    name = f"cli-{uuid.uuid4().hex[:6]}"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "deployments.cli", "users", *args], env=env,
                              capture_output=True, text=True, timeout=120)

    added = cli("add", name)
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert token.startswith(f"dss.{name}.") and "shown once" in added.stderr
    assert stack.client(token).get("/jobs").status_code == 200
    assert cli("add", name).returncode == 1
    listed = cli("list")
    assert name in listed.stdout and "admin" in listed.stdout and token not in listed.stdout
    rotated = cli("rotate", name).stdout.strip()
    user = stack.client(rotated)
    assert rotated != token and user.get("/jobs").status_code == 200
    assert cli("revoke", name).returncode == 0
    # a revoke made outside this API replica: within its token cache time (5 s)
    wait_until(lambda: user.get("/jobs").status_code == 401, 15, 0.5, what="the revoked token to be refused")
    assert_401(user.get("/jobs"))
    assert name not in stack.api.get("/users").text
    missing = cli("revoke", name)
    assert missing.returncode == 1 and missing.stderr.startswith("error: ")
