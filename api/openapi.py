"""The served OpenAPI schema documents the error responses the API really sends, and how
a caller authenticates.

FastAPI documents a 422 body the API never sends (its default `HTTPValidationError`) and
none of the 400/404/409/413/503 answers; clients generated from the schema, and the
schemathesis fuzz test, rely on both being right.

Security: every operation but GET /health requires `Authorization: Bearer <token>`
(the `HTTPBearer` scheme) and documents 401 (with `WWW-Authenticate: Bearer`) and 403;
operations on an object by id document 404 (another user's object is a 404 too, so that
an id reveals nothing); submissions, which per-user quotas bound, document 429 with
`Retry-After`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel


class FieldProblem(BaseModel):
    field: str
    message: str
    type: str | None = None


class InvalidRequest(BaseModel):
    """422: the request's shape is wrong; one entry per field."""

    error: str = "invalid_request"
    detail: list[FieldProblem]


class ErrorDetail(BaseModel):
    """400/404/409/413/503: one sentence; `field` names the request field at fault, if any."""

    detail: str
    field: str | None = None


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorDetail"}}},
    }


def _with_header(response: dict[str, Any], name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {**response, "headers": {name: {"description": description, "schema": schema}}}


UNAVAILABLE = _error("The Prefect API is unreachable or the deployment is not registered")
SECURITY_SCHEME = "HTTPBearer"
PUBLIC_OPERATIONS = {("get", "/health")}
QUOTA_BOUND_OPERATIONS = {
    ("post", "/run"), ("post", "/schedules"), ("post", "/schedules/{schedule_id}/run"), ("post", "/sweeps"),
}
UNAUTHENTICATED = _with_header(
    _error("No token, or a token that is unknown or revoked"),
    "WWW-Authenticate",
    "Always `Bearer`: send `Authorization: Bearer <token>`",
    {"type": "string", "example": "Bearer"},
)
FORBIDDEN = _error("Not allowed for this caller: a `username` naming another user, or an admin-only operation")
NOT_FOUND = _error("No such object, or one that belongs to another user")
OVER_QUOTA = _with_header(
    _error("The caller is at a per-user quota (active jobs, schedules); try again later"),
    "Retry-After",
    "Seconds to wait before trying again",
    {"type": "integer", "minimum": 0},
)
BY_OPERATION: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("post", "/run"): {
        "400": _error("A semantic problem found before queueing (unknown optimizer, bad code, ...)"),
        "413": _error("The request body is larger than DSPY_SERVICE_MAX_REQUEST_MB"),
    },
    ("post", "/run/estimate"): {
        "400": _error("A semantic problem (as for POST /run), rows not inline, or no arithmetic for the optimizer"),
        "413": _error("The request body is larger than DSPY_SERVICE_MAX_REQUEST_MB"),
    },
    ("get", "/jobs/{job_id}/artifact"): {"409": _error("The job has not finished")},
    ("post", "/jobs/{job_id}/cancel"): {"409": _error("The job is already finished")},
    ("delete", "/jobs/{job_id}"): {"409": _error("The job is still active")},
    ("post", "/schedules"): {
        "400": _error("A semantic problem found before scheduling (as for POST /run)"),
        "409": _error("A schedule with this name exists already"),
        "413": _error("The request body is larger than DSPY_SERVICE_MAX_REQUEST_MB"),
    },
    ("patch", "/schedules/{schedule_id}"): {
        "400": _error("The merged job has a semantic problem (as for POST /run)"),
        "409": _error("A schedule with this name exists already"),
        "413": _error("The request body is larger than DSPY_SERVICE_MAX_REQUEST_MB"),
    },
    ("post", "/schedules/{schedule_id}/run"): {"400": _error("The schedule has no job payload")},
    ("post", "/sweeps"): {
        "400": _error("A grid the service will not run (no or an empty axis, too many cells) or a cell POST /run "
                      "would refuse; `field` names it in the sweep's body"),
        "413": _error("The request body is larger than DSPY_SERVICE_MAX_REQUEST_MB"),
    },
    ("post", "/sweeps/{sweep_id}/cancel"): {"409": _error("Every cell of the sweep has ended already")},
}


def document_security(schema: dict[str, Any]) -> None:
    """The bearer scheme on every operation but the public ones, with its 401/403/404/429."""
    schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes.setdefault(SECURITY_SCHEME, {"type": "http", "scheme": "bearer", "description": "An API token"})
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            if (method, path) in PUBLIC_OPERATIONS:
                operation.pop("security", None)
                continue
            operation["security"] = [{SECURITY_SCHEME: []}]
            responses = operation.setdefault("responses", {})
            responses.setdefault("401", UNAUTHENTICATED)
            responses.setdefault("403", FORBIDDEN)
            if "{" in path:
                responses.setdefault("404", NOT_FOUND)
            if (method, path) in QUOTA_BOUND_OPERATIONS:
                responses.setdefault("429", OVER_QUOTA)


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (FieldProblem, InvalidRequest, ErrorDetail):
            schemas[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                responses = operation.setdefault("responses", {})
                if "422" in responses:
                    responses["422"]["content"] = {
                        "application/json": {"schema": {"$ref": "#/components/schemas/InvalidRequest"}}
                    }
                if "{job_id}" in path:
                    responses.setdefault("404", _error("No job with this id (or another user's)"))
                if "{schedule_id}" in path:
                    responses.setdefault(
                        "404", _error("No schedule with this id, or another user's (or, for /champion, no champion)")
                    )
                for code, response in BY_OPERATION.get((method, path), {}).items():
                    responses.setdefault(code, response)
                responses.setdefault("503", UNAVAILABLE)
        document_security(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
