"""Quick retries of Prefect's 503s for the clients the service opens itself.

A Prefect server on SQLite answers a write that loses a race with another write with 503
(a read-then-write transaction on a stale WAL snapshot, which SQLite refuses at once,
whatever the busy timeout). Prefect's client retries 503 after 2 s, then 4 s (with
jitter): bench/run.py measured POST /run p95 1.8 s and max 6.5 s while jobs were being
stored, from these waits alone. This transport retries a 503 within milliseconds first;
Prefect's own retries stay behind it. Prefect rolls a 503'd transaction back, so a retry
is as safe as Prefect's own.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from dspy_service.tls import default_ssl_context

QUICK_RETRY_DELAYS = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8)


def prefect_transport_settings() -> dict:
    # Prefect's own settings for its default transport (the client's `limits` do not
    # apply once a transport is given), with the process's one TLS context (dspy_service/tls.py).
    return {
        "verify": default_ssl_context(),
        "retries": 3,
        "limits": httpx.Limits(max_connections=16, max_keepalive_connections=8, keepalive_expiry=25),
    }


class QuickRetryTransport(httpx.AsyncBaseTransport):
    """For the API's async Prefect client."""

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None, delays: tuple[float, ...] = QUICK_RETRY_DELAYS):
        self.inner = inner or httpx.AsyncHTTPTransport(**prefect_transport_settings())
        self.delays = delays

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        for delay in (*self.delays, None):
            response = await self.inner.handle_async_request(request)
            if response.status_code != 503 or delay is None:
                return response
            await response.aclose()
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self.inner.aclose()


class QuickRetrySyncTransport(httpx.BaseTransport):
    """The same for the sync clients a job opens for its labels and progress artifact."""

    def __init__(self, inner: httpx.BaseTransport | None = None, delays: tuple[float, ...] = QUICK_RETRY_DELAYS):
        self.inner = inner or httpx.HTTPTransport(**prefect_transport_settings())
        self.delays = delays

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for delay in (*self.delays, None):
            response = self.inner.handle_request(request)
            if response.status_code != 503 or delay is None:
                return response
            response.close()
            time.sleep(delay)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.inner.close()


def quick_retry_httpx_settings() -> dict:
    """`httpx_settings` for `get_client()`."""
    return {"transport": QuickRetryTransport()}


def quick_retry_sync_httpx_settings() -> dict:
    """`httpx_settings` for `get_client(sync_client=True)`."""
    return {"transport": QuickRetrySyncTransport()}


def sync_prefect_client():
    """A sync Prefect client (a context manager) with the quick 503 retries."""
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True, httpx_settings=quick_retry_sync_httpx_settings())
