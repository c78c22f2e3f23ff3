"""The app as a browser and a hostile client meet it: CORS only for listed origins, and
code fields that are too large or break the parser are 400s naming the field.

No Prefect here: the app is built without its lifespan, and every request below is
answered before anything reaches the job gateway.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.gateway import JobGateway
from api.identity import Caller, current_user
from api.main import create_app
from dspy_service.settings import ServiceSettings, get_settings
from tests.support.payloads import job_payload

LISTED, UNLISTED = "https://app.example.com", "https://evil.example.net"


@pytest.fixture(autouse=True)
def fresh_settings():
    """Each test's environment is read afresh (get_settings caches the first reading)."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def client(monkeypatch, **env: str) -> TestClient:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    app = create_app()
    app.state.gateway = JobGateway(client=None, settings=ServiceSettings())
    app.dependency_overrides[current_user] = lambda: Caller("tester", admin=False)
    return TestClient(app)


def preflight(api: TestClient, origin: str):
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    return api.options("/run", headers=headers)


def test_no_origin_may_call_the_api_unless_listed(monkeypatch):
    monkeypatch.delenv("DSPY_SERVICE_CORS_ORIGINS", raising=False)
    api = client(monkeypatch)
    for origin in (LISTED, UNLISTED):
        assert "access-control-allow-origin" not in preflight(api, origin).headers
        assert "access-control-allow-origin" not in api.get("/nothing-here", headers={"Origin": origin}).headers


def test_listed_origins_only(monkeypatch):
    api = client(monkeypatch, DSPY_SERVICE_CORS_ORIGINS=f" {LISTED}/ , http://localhost:3000")
    allowed = preflight(api, LISTED)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == LISTED
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    refused = preflight(api, UNLISTED)
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
    assert api.get("/nothing-here", headers={"Origin": LISTED}).headers["access-control-allow-origin"] == LISTED
    assert "access-control-allow-origin" not in api.get("/nothing-here", headers={"Origin": UNLISTED}).headers


@pytest.mark.parametrize("field", ["signature_code", "metric_code"])
def test_a_nested_code_bomb_is_a_400_naming_the_field(monkeypatch, local_lm, field):
    api = client(monkeypatch)
    for bomb in ("x = " + "(" * 60_000 + ")" * 60_000, "x = " + "-" * 50_000 + "1", "x = " + "+".join(["1"] * 20_000)):
        response = api.post("/run", json=job_payload(local_lm.url, rows=10, **{field: bomb}))
        assert response.status_code == 400, response.text
        assert response.json()["field"] == field


@pytest.mark.parametrize("field", ["signature_code", "metric_code"])
def test_code_fields_are_capped(monkeypatch, local_lm, field):
    api = client(monkeypatch, DSPY_SERVICE_MAX_CODE_KB="1")
    code = job_payload(local_lm.url)[field]
    padded = code + "\n# " + "x" * 1024 + "\n"
    response = api.post("/run", json=job_payload(local_lm.url, rows=10, **{field: padded}))
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field and "at most 1 KB" in response.json()["detail"]
