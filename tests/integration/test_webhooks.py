"""Webhooks on a real stack: a job's end reaches its notify_url signed, once per event,
retried after a 500 with the same event id; the delivery log shows the attempts to the
job's owner only; private targets without an allow-list entry are refused."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest

from tests.support.payloads import job_payload
from tests.support.polling import wait_until
from tests.support.webhook_receiver import verify


def owned_payload(lm_url: str, **overrides) -> dict:
    payload = job_payload(lm_url, rows=20, **overrides)
    del payload["username"]  # the caller's
    return payload


def test_job_ends_are_delivered_signed_and_retried(stack, local_lm, webhook_receiver):
    suffix = uuid.uuid4().hex[:8]
    alice, bob = stack.add_user(f"hook-alice-{suffix}"), stack.add_user(f"hook-bob-{suffix}")
    secret = alice.get("/users/me/webhook-secret").json()["secret"]
    explicit, default = f"/{suffix}/explicit", f"/{suffix}/default"
    webhook_receiver.answer(explicit, 500)  # the first attempt fails: the event is sent again

    answer = alice.put("/users/me/notify", json={"notify_url": webhook_receiver.url + default})
    assert answer.status_code == 200, answer.text
    with stack.paused_work_pool():  # a pending job cancelled before it starts ends too
        pending = alice.post("/run", json=owned_payload(local_lm.url)).json()["job_id"]
        assert alice.post(f"/jobs/{pending}/cancel").status_code == 200
    # The explicit notify_url wins over the default.
    first = alice.post("/run", json=owned_payload(local_lm.url, notify_url=webhook_receiver.url + explicit))
    second = alice.post("/run", json=owned_payload(local_lm.url, seed=5))
    assert first.status_code == second.status_code == 201, (first.text, second.text)
    job, default_job = first.json()["job_id"], second.json()["job_id"]

    for job_id in (job, default_job):
        assert stack.wait_terminal(job_id, timeout=120)["status"] == "success"
    wait_until(lambda: len(webhook_receiver.at(explicit)) >= 2, 60, what="the redelivery after the 500")
    wait_until(lambda: len({r.json["job_id"] for r in webhook_receiver.at(default)}) == 2, 60, what="both events")

    # The explicit job: two attempts of one event, both signed, the terminal event only.
    attempts = webhook_receiver.at(explicit)
    assert len({a.header("X-DSPy-Service-Event-Id") for a in attempts}) == 1
    assert all(verify(a, secret) for a in attempts)
    body = attempts[-1].json
    assert body["event"] == "job.succeeded" and body["job_id"] == job and body["status"] == "success"
    assert body["summary"]["job_id"] == job and body["summary"]["status"] == "success"
    assert body["summary"]["optimized_test_metric"] is not None

    # The default URL got both other jobs' ends: the success and the cancel, one each.
    by_job: dict[str, list[str]] = {}
    for received in webhook_receiver.at(default):
        assert verify(received, secret)
        by_job.setdefault(received.json["job_id"], []).append(received.json["event"])
    assert by_job == {default_job: ["job.succeeded"], pending: ["job.cancelled"]}

    # The log: both attempts, the 500 and the 200, with times and durations; no secret.
    def delivered():
        log = alice.get(f"/jobs/{job}/deliveries").json()
        return log if log["deliveries"] and log["deliveries"][0].get("delivered") else None

    log = wait_until(delivered, 30, what="the delivery log")
    (delivery,) = log["deliveries"]
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 200]
    assert all(a["at"] and a["duration_ms"] >= 0 for a in delivery["attempts"])
    assert delivery["event_id"] == attempts[0].header("X-DSPy-Service-Event-Id")
    assert secret not in str(log)
    assert bob.get(f"/jobs/{job}/deliveries").status_code == 404


@pytest.mark.sqlite_only
def test_private_notify_urls_are_refused_without_an_allow_list_entry(stack, local_lm):
    for url in ("http://127.0.0.1:9/hook", "http://169.254.169.254/latest", "ftp://example.com/x", "not a url"):
        answer = stack.api.post("/run", json=owned_payload(local_lm.url, notify_url=url))
        assert answer.status_code == 400, answer.text
        assert answer.json()["field"] == "notify_url"
    answer = stack.api.put("/users/me/notify", json={"notify_url": "http://10.1.2.3/hook"})
    assert answer.status_code == 400 and answer.json()["field"] == "notify_url", answer.text


@pytest.mark.sqlite_only
def test_the_sweep_delivers_an_end_whose_event_was_dropped(stack, local_lm, webhook_receiver):
    """With the delivery automation off (its event "dropped"), the API's sweep, run here a
    minute ahead of time, starts the delivery."""
    from prefect.client.orchestration import get_client

    from api.gateway import JobGateway
    from api.webhook_sweep import GRACE_SECONDS, sweep_deliveries
    from deployments.automations import DELIVERY_AUTOMATION
    from dspy_service.settings import ServiceSettings
    from tests.support.stack import prefect_settings

    automations = stack.prefect.post("/automations/filter", json={}).json()
    automation = next(a for a in automations if a["name"] == DELIVERY_AUTOMATION)
    path = f"/{uuid.uuid4().hex[:8]}/swept"
    assert stack.prefect.patch(f"/automations/{automation['id']}", json={"enabled": False}).status_code == 204
    try:
        job = stack.submit(owned_payload(local_lm.url, notify_url=webhook_receiver.url + path))
        stack.wait_terminal(job, timeout=120)
    finally:
        assert stack.prefect.patch(f"/automations/{automation['id']}", json={"enabled": True}).status_code == 204
    assert not webhook_receiver.at(path)

    async def sweep():
        with prefect_settings(stack.stack):
            async with get_client() as client:
                gateway = JobGateway(client, ServiceSettings())
                later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=GRACE_SECONDS + 5)
                return await sweep_deliveries(gateway, now=later)

    assert job in asyncio.run(sweep())
    wait_until(lambda: webhook_receiver.at(path), 60, what="the swept delivery")
    (received,) = webhook_receiver.at(path)
    assert received.json["job_id"] == job and received.json["event"] == "job.succeeded"
