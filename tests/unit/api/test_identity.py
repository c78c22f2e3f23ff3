"""Authentication: bearer tokens, the per-replica cache, auth off on loopback only, and
that every route but GET /health needs a caller."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api import identity
from api.identity import Caller, CurrentUser, TokenCache
from dspy_service import users
from dspy_service.settings import ServiceSettings
from tests.unit.dspy_service.test_users import Variables, run


def small_app(store: Variables, auth: str = "on", cache_seconds: float = 60) -> FastAPI:
    app = FastAPI()
    app.state.gateway = SimpleNamespace(client=store)
    app.state.tokens = TokenCache(cache_seconds)

    @app.get("/me")
    async def me(caller: CurrentUser):
        return {"username": caller.username, "admin": caller.admin}

    return app


@pytest.fixture
def settings(monkeypatch):
    current = ServiceSettings()
    monkeypatch.setattr(identity, "get_settings", lambda: current)
    return current


def test_missing_malformed_and_unknown_tokens_get_401_with_www_authenticate(settings):
    client = TestClient(small_app(Variables()))
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "},
                    {"Authorization": "Bearer dss.alice.nope"}):
        answer = client.get("/me", headers=headers)
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer", headers
        assert answer.json()["detail"]


def test_a_valid_token_names_the_caller(settings):
    store = Variables()
    token = run(users.add_user(store, "alice"))
    answer = TestClient(small_app(store)).get("/me", headers={"Authorization": f"Bearer {token}"})
    assert answer.json() == {"username": "alice", "admin": False}


def test_a_verified_token_is_cached_until_forgotten(settings):
    store = Variables()
    token = run(users.add_user(store, "alice"))
    app = small_app(store)
    client = TestClient(app)
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/me", headers=headers).status_code == 200
    run(users.revoke_user(store, "alice"))  # as another replica would
    assert client.get("/me", headers=headers).status_code == 200  # still trusted for token_cache_seconds
    app.state.tokens.forget("alice")  # a revoke through this replica
    assert client.get("/me", headers=headers).status_code == 401


def test_no_cache_with_zero_seconds(settings):
    store = Variables()
    token = run(users.add_user(store, "alice"))
    client = TestClient(small_app(store, cache_seconds=0))
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/me", headers=headers).status_code == 200
    run(users.revoke_user(store, "alice"))
    assert client.get("/me", headers=headers).status_code == 401


def test_auth_off_is_the_open_admin_like_user_on_loopback_only(settings):
    settings.auth = "off"
    app = small_app(Variables())
    on_loopback = TestClient(app, base_url="http://127.0.0.1:8000")
    assert on_loopback.get("/me").json() == {"username": identity.OPEN_USERNAME, "admin": True}
    elsewhere = TestClient(app, base_url="http://10.1.2.3:8000")  # the connection's local address
    assert elsewhere.get("/me").status_code == 403


@pytest.mark.parametrize(
    ("host", "refused"), [("127.0.0.1", False), ("localhost", False), ("::1", False), ("0.0.0.0", True),
                          ("10.0.0.5", True), ("", True)]
)
def test_auth_off_needs_a_loopback_api_host(host, refused):
    problem = ServiceSettings(auth="off", api_host=host).auth_mode_problem()
    assert (problem is not None) == refused
    assert ServiceSettings(auth="on", api_host=host).auth_mode_problem() is None


def test_the_owner_rule():
    assert Caller("alice").owns("alice") and not Caller("alice").owns("bob") and not Caller("alice").owns(None)
    assert Caller("root", admin=True).owns("bob")


def depends_on(dependant, call) -> bool:
    return any(d.call is call or depends_on(d, call) for d in dependant.dependencies)


def api_routes(routes) -> list:
    """Routes with dependencies, through included routers (our routers have no prefix)."""
    found = []
    for route in routes:
        if hasattr(route, "dependant"):
            found.append(route)
        elif hasattr(route, "original_router"):
            found += api_routes(route.original_router.routes)
    return found


def test_every_route_but_health_needs_a_caller():
    from api.main import app

    routes = api_routes(app.routes)
    assert len(routes) > 15
    open_routes = sorted(r.path for r in routes if not depends_on(r.dependant, identity.current_user))
    assert open_routes == ["/health"]
    assert {"/users", "/users/{username}", "/users/{username}/rotate"} <= {r.path for r in routes}
