"""The served OpenAPI schema documents how to authenticate and what a caller may be refused."""

from __future__ import annotations

import pytest

from api.main import create_app

METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture(scope="module")
def schema() -> dict:
    return create_app().openapi()


def operations(schema: dict):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method, path, operation


def test_the_bearer_scheme_is_declared(schema):
    assert schema["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token",
    }


def test_every_operation_but_health_requires_a_token_and_documents_401_and_403(schema):
    secured = 0
    for method, path, operation in operations(schema):
        if (method, path) == ("get", "/health"):
            assert "security" not in operation and "401" not in operation["responses"]
            continue
        secured += 1
        assert operation["security"] == [{"HTTPBearer": []}], (method, path)
        unauthenticated = operation["responses"]["401"]
        assert "WWW-Authenticate" in unauthenticated["headers"], (method, path)
        assert "403" in operation["responses"], (method, path)
        if "{" in path:
            assert "404" in operation["responses"], (method, path)
    assert secured >= 15


def test_submissions_document_429_with_retry_after(schema):
    limited = {(m, p) for m, p, op in operations(schema) if "429" in op["responses"]}
    assert limited == {
        ("post", "/run"), ("post", "/schedules"), ("post", "/schedules/{schedule_id}/run"), ("post", "/sweeps")
    }
    retry = schema["paths"]["/run"]["post"]["responses"]["429"]
    assert retry["headers"]["Retry-After"]["schema"]["type"] == "integer"
    assert retry["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorDetail"}
