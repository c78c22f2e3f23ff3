"""Where the service is and how to talk to it: base URL and token defaults, one HTTP
session per client (sync and async), and the API's errors turned into exceptions.

Defaults, first found wins: the arguments; `DSPY_SERVICE_URL` / `DSPY_SERVICE_TOKEN`; what
`dspy-service up` starts on this machine (http://127.0.0.1:8000 and the admin token file in
the service home, when this user can read it). How it fails: a 4xx/5xx answer raises the
matching `ServiceError` subclass; a connection that cannot be made raises
`ServiceUnavailable` naming the URL.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx

from dspy_service.client.errors import ServiceUnavailable, error_from_response

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "DSPY_SERVICE_URL"
TOKEN_ENV = "DSPY_SERVICE_TOKEN"


def default_url(explicit: str | None = None) -> str:
    return (explicit or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")


def default_token(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    try:
        from dspy_service.settings import get_settings

        path = get_settings().admin_token_file
        return path.read_text().strip() or None if path.is_file() else None
    except (OSError, ValueError):
        return None


def _headers(token: str | None) -> dict[str, str]:
    headers = {"User-Agent": "dspy-service-client"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def checked(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        response.read()
        raise error_from_response(response)
    return response


def _unreachable(base_url: str, exc: httpx.TransportError) -> ServiceUnavailable:
    return ServiceUnavailable(None, f"cannot reach the service at {base_url}: {type(exc).__name__}: {exc}")


class Connection:
    """A sync HTTP session with the service."""

    def __init__(self, base_url: str | None = None, token: str | None = None, timeout: float = 30.0):
        self.base_url = default_url(base_url)
        self.token = default_token(token)
        self.http = httpx.Client(base_url=self.base_url, headers=_headers(self.token), timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON of a successful answer (None for an empty body)."""
        try:
            response = checked(self.http.request(method, path, **kwargs))
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from exc
        return response.json() if response.content else None

    @contextmanager
    def stream(
        self, path: str, headers: dict[str, str] | None = None, read_timeout: float = 60.0
    ) -> Iterator[httpx.Response]:
        timeout = httpx.Timeout(self.http.timeout.connect, read=read_timeout)
        with self.http.stream("GET", path, headers=headers, timeout=timeout) as response:
            yield checked(response)

    def close(self) -> None:
        self.http.close()


class AsyncConnection:
    """The async twin of `Connection`."""

    def __init__(self, base_url: str | None = None, token: str | None = None, timeout: float = 30.0):
        self.base_url = default_url(base_url)
        self.token = default_token(token)
        self.http = httpx.AsyncClient(base_url=self.base_url, headers=_headers(self.token), timeout=timeout)

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise _unreachable(self.base_url, exc) from exc
        if response.status_code >= 400:
            raise error_from_response(response)
        return response.json() if response.content else None

    @asynccontextmanager
    async def stream(
        self, path: str, headers: dict[str, str] | None = None, read_timeout: float = 60.0
    ) -> AsyncIterator[httpx.Response]:
        timeout = httpx.Timeout(self.http.timeout.connect, read=read_timeout)
        async with self.http.stream("GET", path, headers=headers, timeout=timeout) as response:
            if response.status_code >= 400:
                await response.aread()
                raise error_from_response(response)
            yield response

    async def close(self) -> None:
        await self.http.aclose()
