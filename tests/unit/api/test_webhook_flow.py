"""The delivery flow's loop, on fakes of Prefect and the network: retries until a 2xx,
gives up after the window, logs every attempt, skips an end delivered already."""

from __future__ import annotations

import asyncio
import logging

import pytest

from api import webhook_flow
from api.gateway import Outcome
from api.status import JobStatus
from dspy_service.settings import ServiceSettings
from dspy_service.webhooks import Attempt, event_id

JOB = "6a1f0c2b-7a6f-4d8d-8e4c-1b4bd59d8e3f"
SPEC = {
    "username": "alice", "module_name": "predict", "signature_code": "x", "metric_code": "y",
    "optimizer_name": "bootstrap", "column_mapping": {"inputs": {"q": "q"}}, "model_config": {"name": "openai/m"},
    "notify_url": "https://hooks.example.com/in?token=t",
}


class Gateway:
    def __init__(self, client, settings):
        pass

    async def get(self, job_id):
        state = {"id": "state-1", "type": "COMPLETED", "name": "Completed", "timestamp": "2026-01-01T00:00:00+00:00"}
        return {"id": JOB, "tags": ["user:alice"], "parameters": {"job": SPEC}, "state": state, "labels": {}}

    async def outcome(self, run):
        return Outcome(JobStatus.success)


class Store:
    logs: dict = {}
    saved: list = []

    def __init__(self, client):
        pass

    async def log(self, job_id):
        return [dict(d, attempts=list(d["attempts"])) for d in self.logs.get(job_id, [])]

    async def save_log(self, job_id, deliveries):
        self.saved.append([dict(d, attempts=list(d["attempts"])) for d in deliveries])

    async def secret(self, owner):
        assert owner == "alice"
        return "whsec_test", None


@pytest.fixture
def fakes(monkeypatch):
    monkeypatch.setattr(webhook_flow, "JobGateway", Gateway)
    monkeypatch.setattr(webhook_flow, "WebhookStore", Store)
    Store.logs, Store.saved = {}, []
    answers, sent = [], []

    async def send(url, body, headers, policy, timeout):
        sent.append(headers)
        status = answers.pop(0) if answers else 200
        return Attempt("2026-01-01T00:00:01+00:00", 3, status_code=status)

    monkeypatch.setattr(webhook_flow, "send", send)
    return answers, sent


def deliver(settings: ServiceSettings, waits: list[float]) -> dict:
    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    return asyncio.run(webhook_flow.deliver(None, settings, JOB, logging.getLogger("test"), sleep))


def test_a_failed_attempt_is_retried_with_the_same_event_id(fakes):
    answers, sent = fakes
    answers.extend([500, 502])
    waits: list[float] = []
    result = deliver(ServiceSettings(webhook_first_retry_seconds=2, webhook_give_up_seconds=60), waits)
    assert result["delivered"] and result["attempts"] == 3 and waits == [2, 4]
    assert len({h["X-DSPy-Service-Event-Id"] for h in sent}) == 1
    assert [len(log[0]["attempts"]) for log in Store.saved] == [1, 2, 3]  # written as it goes
    final = Store.saved[-1][0]
    assert final["delivered"] and not final["gave_up"] and final["event"] == "job.succeeded"
    assert final["url"] == "https://hooks.example.com/in"  # no query in the log


def test_a_delivery_gives_up_after_its_window(fakes):
    answers, _ = fakes
    answers.extend([500] * 10)
    waits: list[float] = []
    result = deliver(ServiceSettings(webhook_first_retry_seconds=2, webhook_give_up_seconds=7), waits)
    assert not result["delivered"] and waits == [2, 4] and result["attempts"] == 3
    assert Store.saved[-1][0]["gave_up"]


def test_an_end_delivered_already_is_not_sent_again(fakes):
    _, sent = fakes
    Store.logs = {JOB: [{"event_id": event_id(JOB, "state-1"), "delivered": True, "attempts": []}]}
    assert deliver(ServiceSettings(), [])["skipped"] == "delivered already" and not sent
