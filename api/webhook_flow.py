"""The webhook delivery flow: POST one job's end to its notify_url, signed, with retries.

A flow of its own deployment (`deliver-job-event/<notify_deployment>`, registered by
deployments/register.py) on a work pool of its own (`notify_work_pool`), whose worker runs
it as ordinary trusted code (`python -m prefect.engine`), outside the job sandbox: it
holds the Prefect credentials it needs to read the job, the owner's signing secret and to
write the delivery log. It lives in `api/` because what it sends is the API's own view of
the job (`GET /jobs/{id}/summary`, api/views.py).

What starts it: the automation `deployments/automations.py: delivery_automation` runs it
with the job id on every terminal state event (Completed, Failed, Crashed, Cancelled) of a
run of the optimization deployment tagged `contract.NOTIFY_TAG`; the API's sweep
(api/webhook_sweep.py) starts it for ends whose event was dropped.

What it does: reads the job (gone, not finished, or without a notify_url: nothing to
do), computes the stable event id of its terminal state, and unless the delivery log
says that event was delivered already, POSTs it (dspy_service/webhooks.py) until a 2xx
answer, waiting `webhook_first_retry_seconds`, doubling up to `webhook_max_retry_seconds`,
for at most `webhook_give_up_seconds`. Every attempt is appended to the job's delivery log
(dspy_service/webhook_store.py) as it happens. At least once: a run that dies between a
2xx and writing the log sends the event again when started again; receivers dedupe on
`X-DSPy-Service-Event-Id`.

How it fails: a delivery that never gets a 2xx ends the flow run Completed with
`delivered: false` and the log saying `gave_up` (the receiver's failure is no failure of
the service); Prefect errors reading the job or the secret fail the flow run; a log write
that fails is logged as a warning and the delivery goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.orchestration import PrefectClient, get_client

from api import views
from api.gateway import JobGateway
from api.ownership import run_owner
from dspy_service.contract import TERMINAL_STATE_TYPES
from dspy_service.settings import NOTIFY_FLOW_NAME, ServiceSettings, get_settings
from dspy_service.webhook_store import WebhookStore
from dspy_service.webhooks import EVENTS, event_body, event_id, retry_delays, send, shown_url, signed_headers


@flow(name=NOTIFY_FLOW_NAME, log_prints=False, persist_result=False)
async def deliver_job_event(job_id: str) -> dict[str, Any]:
    """POST the end of job `job_id` to its notify_url (see the module docstring)."""
    async with get_client() as client:
        return await deliver(client, get_settings(), job_id, get_run_logger())


async def deliver(
    client: PrefectClient,
    settings: ServiceSettings,
    job_id: str,
    logger: logging.Logger | logging.LoggerAdapter,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> dict[str, Any]:
    """Deliver one job's end; returns what happened (the flow run's result)."""
    gateway = JobGateway(client, settings)
    run = await gateway.get(job_id)
    spec = views.job_spec_of(run) if run is not None else None
    state = (run or {}).get("state") or {}
    if run is None or spec is None or not spec.notify_url:
        return {"job_id": job_id, "skipped": "no such job, or it has no notify_url"}
    if state.get("type") not in TERMINAL_STATE_TYPES:
        return {"job_id": job_id, "skipped": f"the job is {state.get('name')}, not finished"}
    outcome = await gateway.outcome(run)
    the_event = event_id(job_id, state.get("id"))
    store = WebhookStore(client)
    deliveries = await store.log(job_id)
    record = next((d for d in deliveries if d.get("event_id") == the_event), None)
    if record is not None and record.get("delivered"):
        return {"job_id": job_id, "event_id": the_event, "skipped": "delivered already"}
    if record is None:
        name = EVENTS[outcome.status.value]
        record = {"event_id": the_event, "event": name, "url": shown_url(spec.notify_url), "attempts": []}
        deliveries.append(record)
    record.update(delivered=False, gave_up=False)
    secret, _ = await store.secret(run_owner(run) or spec.username)
    body = event_body(job_id, outcome.status.value, views.summary(run, outcome.status, outcome.message))
    delays = retry_delays(
        settings.webhook_first_retry_seconds, settings.webhook_max_retry_seconds, settings.webhook_give_up_seconds
    )
    while True:
        headers = signed_headers(secret, the_event, body)
        attempt = await send(spec.notify_url, body, headers, settings.egress_policy, settings.webhook_timeout_seconds)
        record["attempts"].append(attempt.record())
        record["delivered"] = attempt.delivered
        delay = None if attempt.delivered else next(delays, None)
        record["gave_up"] = not attempt.delivered and delay is None
        outcome_text = f"HTTP {attempt.status_code}" if attempt.status_code is not None else attempt.error
        logger.info("%s of job %s to %s: %s", record["event"], job_id, record["url"], outcome_text)
        await save(store, job_id, deliveries, logger)
        if delay is None:
            break
        await sleep(delay)
    return {
        "job_id": job_id,
        "event_id": the_event,
        "delivered": record["delivered"],
        "attempts": len(record["attempts"]),
    }


async def save(
    store: WebhookStore, job_id: str, deliveries: list[dict[str, Any]], logger: logging.Logger | logging.LoggerAdapter
) -> None:
    try:
        await store.save_log(job_id, deliveries)
    except Exception as exc:  # noqa: BLE001 - the delivery matters more than its log
        logger.warning("could not write the delivery log of job %s: %s", job_id, exc)
