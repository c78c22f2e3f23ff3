"""Webhooks: the caller's default notify_url and signing secret, and a job's delivery log.

- `GET /users/me/notify`, `PUT /users/me/notify {"notify_url": "https://..." | null}`: the
  default notify_url of the caller's jobs and schedules created from then on (a body that
  sets `notify_url`, even to null, overrides it);
- `GET /users/me/webhook-secret` (made on first read), `POST /users/me/webhook-secret/rotate`:
  the key of the HMAC-SHA256 signature of every event of the caller's jobs;
- `GET /jobs/{id}/deliveries`: each event of the job sent to its notify_url and every
  attempt (time, HTTP status or error, duration); no secret and no URL query is in it.

Failures: a notify_url the service may not send to is a 400 naming `notify_url`
(api/preflight.py: `check_notify_url`); another user's job is a 404 (api/deps.py).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from api.deps import GatewayDep, JobRunDep
from api.identity import CurrentUser
from api.openapi import ErrorDetail
from api.preflight import check_notify_url
from api.views import job_spec_of
from dspy_service.webhook_store import WebhookStore
from dspy_service.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, shown_url

router = APIRouter(tags=["webhooks"])
BAD_URL = {400: {"model": ErrorDetail, "description": "notify_url is not an http(s) URL the service may send to"}}


class NotifyDefault(BaseModel):
    notify_url: str | None = Field(
        max_length=2000, description="http(s) URL for the ends of your jobs created from now on; null: none."
    )


@router.get("/users/me/notify")
async def get_notify_default(gateway: GatewayDep, caller: CurrentUser):
    """The caller's default notify_url (null: none)."""
    return {"notify_url": await WebhookStore(gateway.client).default_url(caller.username)}


@router.put("/users/me/notify", responses=BAD_URL)
async def set_notify_default(body: NotifyDefault, gateway: GatewayDep, caller: CurrentUser):
    """Set (or with null, remove) the caller's default notify_url. Jobs and schedules
    created afterwards without their own `notify_url` use it."""
    url = body.notify_url.strip() if body.notify_url else None
    if url:
        await run_in_threadpool(check_notify_url, url)
    await WebhookStore(gateway.client).set_default_url(caller.username, url)
    return {"notify_url": url}


def secret_answer(secret: str, created) -> dict:
    return {
        "secret": secret,
        "created_at": created.isoformat() if created else None,
        "algorithm": "HMAC-SHA256 over `<timestamp>.<body>`, hex, sent as `sha256=<hex>`",
        "headers": {"signature": SIGNATURE_HEADER, "timestamp": TIMESTAMP_HEADER, "event_id": EVENT_ID_HEADER},
    }


@router.get("/users/me/webhook-secret")
async def get_webhook_secret(gateway: GatewayDep, caller: CurrentUser):
    """The caller's webhook signing secret (made on first read)."""
    return secret_answer(*await WebhookStore(gateway.client).secret(caller.username))


@router.post("/users/me/webhook-secret/rotate")
async def rotate_webhook_secret(gateway: GatewayDep, caller: CurrentUser):
    """A new signing secret; events sent from now on are signed with it."""
    return secret_answer(*await WebhookStore(gateway.client).rotate_secret(caller.username))


@router.get("/jobs/{job_id}/deliveries")
async def get_job_deliveries(run: JobRunDep, gateway: GatewayDep):
    """The job's webhook deliveries: per event, whether it was delivered and every attempt."""
    spec = job_spec_of(run)
    url = spec.notify_url if spec else None
    deliveries = await WebhookStore(gateway.client).log(run["id"])
    return {"job_id": run["id"], "notify_url": shown_url(url) if url else None, "deliveries": deliveries}
