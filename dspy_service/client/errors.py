"""What the client raises: the API's refusals as typed exceptions, and a job that did not succeed.

`ServiceError` carries the HTTP status, the request field the API named (None when it
named none) and the API's message; `str()` is one readable line. The subclasses say the
class of failure a script branches on: `AuthError` (401/403), `NotFound` (404),
`InvalidRequest` (400/422), `Conflict` (409). `ServiceUnavailable` is a transport error or
a 5xx. `JobFailed` is a job that ended failed or cancelled.
"""

from __future__ import annotations

from typing import Any

import httpx


class ServiceError(Exception):
    def __init__(self, status_code: int | None, message: str, field: str | None = None, body: Any = None):
        self.status_code = status_code
        self.message = message
        self.field = field
        self.body = body
        where = f"{field}: " if field else ""
        code = f" ({status_code})" if status_code else ""
        super().__init__(f"{where}{message}{code}")


class AuthError(ServiceError):
    """401: no or a wrong token; 403: the token may not do this."""


class NotFound(ServiceError):
    """404: no such object, or one of another user (ids do not reveal that they exist)."""


class InvalidRequest(ServiceError):
    """400/422: the request names a field that is wrong; `field` says which."""


class Conflict(ServiceError):
    """409: the object is in a state that does not allow this (e.g. cancel a finished job)."""


class ServiceUnavailable(ServiceError):
    """The service could not be reached or answered 5xx."""


class JobFailed(Exception):
    """A job that ended `failed` or `cancelled`; `message` is the service's reason."""

    def __init__(self, job_id: str, status: str, message: str | None):
        self.job_id = job_id
        self.status = status
        self.message = message
        super().__init__(f"job {job_id} {status}: {message or 'no reason given'}")


def error_from_response(response: httpx.Response) -> ServiceError:
    """The exception for a 4xx/5xx answer, with the field and message the API gave."""
    try:
        body = response.json()
    except ValueError:
        body = None
    field, message = None, response.text.strip() or response.reason_phrase
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]  # the API's 422: [{field, message, type}]
        field, message = first.get("field"), str(first.get("message") or first.get("msg") or message)
        if len(detail) > 1:
            message += f" (and {len(detail) - 1} more problem{'s' if len(detail) > 2 else ''})"
    elif isinstance(detail, str):
        message = detail
    if isinstance(body, dict) and isinstance(body.get("field"), str):
        field = body["field"]
    status = response.status_code
    if status in (401, 403):
        kind: type[ServiceError] = AuthError
    elif status == 404:
        kind = NotFound
    elif status in (400, 422):
        kind = InvalidRequest
    elif status == 409:
        kind = Conflict
    elif status >= 500:
        kind = ServiceUnavailable
    else:
        kind = ServiceError
    return kind(status, message, field, body)
