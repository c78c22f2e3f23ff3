"""/credentials over HTTP: what is shown (last 4 only), per owner, and when a delete is refused.

The Secret store and the schedule list are in-memory stand-ins; the caller is set with a
dependency override (the real blocks: tests/integration/test_secrets.py).
"""

from __future__ import annotations

import json
import uuid

import pytest
from fastapi.testclient import TestClient
from prefect.client.schemas.objects import DeploymentSchedule

from api.credentials import Credentials
from api.identity import Caller, current_user
from api.main import create_app
from api.routes.credentials import get_credentials
from dspy_service.contract import credential_block
from tests.unit.api.test_submission import Secrets

KEY = "sk-credential-canary-7f3a"


class ScheduleList:
    def __init__(self):
        self.schedules: list[DeploymentSchedule] = []

    async def list(self):
        return self.schedules

    def add_job_using(self, owner: str, name: str) -> None:
        refs = {"inline_block": None, "credential_blocks": {"main": credential_block(owner, name)}}
        job = {"username": owner, "model_config": {"name": "openai/x", "credential": name}, "secret_refs": refs}
        self.schedules.append(
            DeploymentSchedule(id=uuid.uuid4(), slug="nightly", schedule={"interval": 3600}, parameters={"job": job})
        )


@pytest.fixture
def api():
    secrets, schedules, caller = Secrets(), ScheduleList(), {"user": Caller("alice")}
    app = create_app()
    app.dependency_overrides[current_user] = lambda: caller["user"]
    app.dependency_overrides[get_credentials] = lambda: Credentials(secrets, schedules)
    client = TestClient(app)  # no lifespan: nothing here talks to Prefect
    client.secrets, client.schedules, client.caller = secrets, schedules, caller
    return client


def test_create_shows_the_last_4_characters_only(api):
    response = api.post("/credentials", json={"name": "prod", "api_key": KEY, "headers": {"X-Org": "acme-secret"}})
    assert response.status_code == 201, response.text
    answer = response.json()
    assert answer["name"] == "prod" and answer["api_key_last4"] == "7f3a" and answer["headers"] == ["X-Org"]
    assert answer["created_at"] and KEY not in response.text and "acme-secret" not in response.text
    stored = api.secrets.blocks[credential_block("alice", "prod")]
    assert stored == {"api_key": KEY, "headers": {"X-Org": "acme-secret"}}
    listed = api.get("/credentials")
    assert listed.status_code == 200 and KEY not in listed.text
    assert [item["api_key_last4"] for item in listed.json()["items"]] == ["7f3a"]


def test_a_short_key_shows_no_characters(api):
    assert api.post("/credentials", json={"name": "short", "api_key": "abc12"}).json()["api_key_last4"] is None


def test_a_taken_name_is_409_and_keeps_the_first_key(api):
    api.post("/credentials", json={"name": "prod", "api_key": KEY})
    again = api.post("/credentials", json={"name": "prod", "api_key": "sk-other-key-0000"})
    assert again.status_code == 409 and "prod" in again.json()["detail"]
    assert api.secrets.blocks[credential_block("alice", "prod")]["api_key"] == KEY


@pytest.mark.parametrize("body, field", [({"name": "Bad Name", "api_key": KEY}, "name"), ({"name": "ok"}, "api_key")])
def test_bad_bodies_are_422_naming_the_field(api, body, field):
    response = api.post("/credentials", json=body)
    assert response.status_code == 422 and response.json()["detail"][0]["field"] == field


def test_each_owner_sees_their_own_only(api):
    api.post("/credentials", json={"name": "prod", "api_key": KEY})
    api.caller["user"] = Caller("bob")
    assert api.get("/credentials").json() == {"items": [], "total": 0}
    assert api.delete("/credentials/prod").status_code == 404
    assert api.post("/credentials", json={"name": "prod", "api_key": "sk-bob-key-1234"}).status_code == 201


def test_delete_is_refused_while_a_schedule_uses_it(api):
    api.post("/credentials", json={"name": "prod", "api_key": KEY})
    api.schedules.add_job_using("alice", "prod")
    refused = api.delete("/credentials/prod")
    assert refused.status_code == 409 and "nightly" in refused.json()["detail"]
    api.schedules.schedules.clear()
    assert api.delete("/credentials/prod").json() == {"name": "prod", "deleted": True}
    assert api.delete("/credentials/prod").status_code == 404
    assert json.dumps(api.secrets.blocks) == "{}"
