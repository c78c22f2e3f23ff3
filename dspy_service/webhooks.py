"""Webhooks: the signed JSON event a job's end sends to its `notify_url`, and one attempt
at sending it (the delivery flow, api/webhook_flow.py, retries; the store of secrets,
defaults and delivery logs is dspy_service/webhook_store.py).

Wire format (README "Webhooks"): `POST <notify_url>` with the JSON body
`{event, job_id, status, summary}` and the headers

- `X-DSPy-Service-Event-Id`: stable per terminal state of a job (every retry and every
  redelivery of that end carries the same id: receivers dedupe on it);
- `X-DSPy-Service-Timestamp`: Unix seconds of this attempt;
- `X-DSPy-Service-Signature`: `sha256=<hex HMAC-SHA256 over "<timestamp>.<body>">` keyed
  with the owner's webhook secret.

Where a webhook may go is the egress policy's rule (dspy_service/egress_policy.py):
loopback, private and other non-public addresses only when DSPY_SERVICE_EGRESS_ALLOW lists
them, link-local and metadata never. `notify_url_problem` is the API's check; `send`
resolves the name again at send time, checks every address and connects to the one it
checked (a name that re-resolves to a private address is refused: DNS rebinding).
Redirects are not followed.

How it fails: nothing here raises for a bad target or a failed send; `notify_url_problem`
returns the reason, `send` returns an `Attempt` whose `error` says what went wrong (a
refused address, a timeout, a connection error) or whose `status_code` is not 2xx.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from dspy_service.egress_policy import EgressPolicy, parse_address, resolve, url_target

SIGNATURE_HEADER = "X-DSPy-Service-Signature"
TIMESTAMP_HEADER = "X-DSPy-Service-Timestamp"
EVENT_ID_HEADER = "X-DSPy-Service-Event-Id"
USER_AGENT = "dspy-service-webhooks/1"
# Job status (api/status.py) -> event name.
EVENTS = {"success": "job.succeeded", "failed": "job.failed", "cancelled": "job.cancelled"}
EVENT_ID_NAMESPACE = uuid.UUID("6f1d8d0e-4c1b-4bd5-9d8e-3f6a1f0c2b7a")
ERROR_CHARS = 300


def notify_url_problem(url: str, policy: EgressPolicy) -> str | None:
    """Why the service may not POST to `url`, or None: an http(s) URL with a host whose
    addresses the egress policy allows (a name that does not resolve now passes; it is
    checked again at every send)."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return f"{url!r} is not an http(s) URL with a host"
    if parts.username or parts.password:
        return "credentials in the URL are not allowed (the signature authenticates the service)"
    return policy.url_problem(url)


def shown_url(url: str) -> str:
    """The URL as a log shows it: scheme, host, port and path (no query, no credentials)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def event_id(job_id: str, state_id: str | None) -> str:
    """The id of a job's end: one terminal state of one job, whatever the attempt."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{job_id}/{state_id}"))


def event_body(job_id: str, status: str, summary: dict[str, Any]) -> bytes:
    payload = {"event": EVENTS[status], "job_id": job_id, "status": status, "summary": summary}
    return json.dumps(payload, separators=(",", ":"), default=str).encode()


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 over `<timestamp>.<body>`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def signed_headers(secret: str, event: str, body: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = str(int(now if now is not None else time.time()))
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_ID_HEADER: event,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(secret, timestamp, body),
    }


def retry_delays(first: float, longest: float, give_up: float) -> Iterator[float]:
    """The waits between attempts: `first`, doubling, at most `longest` each, until their
    sum would pass `give_up` (so the attempts span at most `give_up` seconds of waiting)."""
    waited, delay = 0.0, first
    while waited + delay <= give_up:
        yield delay
        waited += delay
        delay = min(delay * 2, longest)


@dataclass(frozen=True)
class Attempt:
    """One POST: when, the HTTP status (or the error that stopped it), how long it took."""

    at: str
    duration_ms: int
    status_code: int | None = None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    def record(self) -> dict[str, Any]:
        return {"at": self.at, "status_code": self.status_code, "error": self.error, "duration_ms": self.duration_ms}


def pinned(url: str, address: str) -> tuple[str, str, str]:
    """(the URL with its host replaced by `address`, the Host header, the TLS server name)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    literal = f"[{address}]" if ":" in address else address
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    host_header = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")), host_header, host


async def checked_address(url: str, policy: EgressPolicy) -> tuple[str | None, str | None]:
    """(the address to connect to, None) or (None, why not): every address the host resolves
    to now must pass the policy."""
    target = url_target(url)
    if target is None or urlsplit(url).scheme.lower() not in ("http", "https"):
        return None, f"{shown_url(url)!r} is not an http(s) URL with a host"
    host, port = target
    literal = parse_address(host)
    addresses = [str(literal)] if literal is not None else await asyncio.to_thread(resolve, host, port)
    problem = policy.addresses_problem(host, port, addresses)
    return (None, f"refused: {problem}") if problem else (addresses[0], None)


async def send(url: str, body: bytes, headers: dict[str, str], policy: EgressPolicy, timeout: float) -> Attempt:
    """One attempt: resolve and check the target, POST to the checked address."""
    at = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
    started = time.monotonic()

    def elapsed() -> int:
        return int((time.monotonic() - started) * 1000)

    address, problem = await checked_address(url, policy)
    if address is None:
        return Attempt(at, elapsed(), error=problem)
    request_url, host_header, server_name = pinned(url, address)
    extensions = {"sni_hostname": server_name} if request_url.startswith("https") else {}
    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            response = await client.post(
                request_url, content=body, headers={**headers, "Host": host_header}, extensions=extensions
            )
    except httpx.HTTPError as exc:
        return Attempt(at, elapsed(), error=f"{type(exc).__name__}: {exc}"[:ERROR_CHARS])
    return Attempt(at, elapsed(), status_code=response.status_code)
