"""Webhook signing, event ids, retry waits, URL checks and one send (on a local server)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

import pytest

from dspy_service.egress_policy import EgressPolicy
from dspy_service.webhook_store import MAX_CHARS, trimmed
from dspy_service.webhooks import (
    event_body,
    event_id,
    notify_url_problem,
    pinned,
    retry_delays,
    send,
    shown_url,
    signature,
    signed_headers,
)
from tests.support.webhook_receiver import Received, WebhookReceiver, verify


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body():
    body = event_body("job-1", "success", {"status": "success"})
    headers = signed_headers("whsec_x", "event-1", body, now=1700000000)
    expected = hmac.new(b"whsec_x", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert headers["X-DSPy-Service-Signature"] == f"sha256={expected}" == signature("whsec_x", "1700000000", body)
    assert headers["X-DSPy-Service-Timestamp"] == "1700000000" and headers["X-DSPy-Service-Event-Id"] == "event-1"
    assert verify(Received("/", headers, body), "whsec_x")
    assert not verify(Received("/", headers, body + b" "), "whsec_x")
    assert json.loads(body) == {"event": "job.succeeded", "job_id": "job-1", "status": "success",
                                "summary": {"status": "success"}}


def test_an_event_id_is_stable_per_terminal_state():
    assert event_id("job", "state-1") == event_id("job", "state-1")
    assert event_id("job", "state-1") != event_id("job", "state-2") != event_id("other", "state-2")


def test_retry_waits_double_up_to_the_longest_and_stop_within_the_window():
    assert list(retry_delays(5, 20, 60)) == [5, 10, 20, 20]
    assert list(retry_delays(5, 300, 0)) == []


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://example.com/hook", None),
        ("ftp://example.com/x", "not an http(s) URL"),
        ("example.com/hook", "not an http(s) URL"),
        ("http://[::1/hook", "not an http(s) URL"),
        ("http://example.com:99999/", "not an http(s) URL"),
        ("https://user:pw@example.com/", "credentials"),
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://10.0.0.1/hook", "private"),
        ("http://169.254.169.254/latest", "metadata"),
    ],
)
def test_notify_urls_follow_the_egress_policy(url, problem):
    found = notify_url_problem(url, EgressPolicy())
    assert (found is None) if problem is None else (problem in found)
    assert notify_url_problem("http://127.0.0.1:9/hook", EgressPolicy.parse("127.0.0.1:9")) is None


def test_shown_urls_drop_query_and_credentials_and_pinned_keeps_the_host():
    assert shown_url("https://u:p@example.com:8443/a/b?token=s3cret") == "https://example.com:8443/a/b"
    assert pinned("https://example.com:8443/a?x=1", "93.184.216.34") == (
        "https://93.184.216.34:8443/a?x=1", "example.com:8443", "example.com"
    )
    assert pinned("http://example.com", "2001:db8::1")[0] == "http://[2001:db8::1]/"


def test_a_send_posts_to_an_allowed_address_and_refuses_a_denied_one():
    receiver = WebhookReceiver()
    try:
        url = receiver.url + "/in"
        receiver.answer("/in", 503)
        policy = EgressPolicy.parse(url.removeprefix("http://").split("/")[0])
        body = b'{"event":"job.failed"}'
        first = asyncio.run(send(url, body, signed_headers("s", "e", body), policy, 5))
        second = asyncio.run(send(url, body, signed_headers("s", "e", body), policy, 5))
        assert (first.status_code, first.delivered, second.status_code, second.delivered) == (503, False, 200, True)
        assert receiver.at("/in")[-1].body == body
        refused = asyncio.run(send(url, body, {}, EgressPolicy(), 5))  # no allow-list entry: loopback refused
        assert refused.status_code is None and "refused" in refused.error and "loopback" in refused.error
        assert len(receiver.at("/in")) == 2
        gone = asyncio.run(send("http://127.0.0.1:9/x", body, {}, EgressPolicy.parse("127.0.0.1:9"), 2))
        assert gone.error and gone.status_code is None and gone.record()["duration_ms"] >= 0
    finally:
        receiver.close()


def test_a_log_stays_within_prefects_variable_size():
    attempt = {"at": "2026-01-01T00:00:00.000+00:00", "status_code": None, "error": "x" * 300, "duration_ms": 1}
    deliveries = [{"event_id": str(i), "attempts": [attempt] * 50} for i in range(5)]
    kept = trimmed(deliveries)
    assert len(json.dumps({"deliveries": kept})) <= MAX_CHARS
    assert kept[-1]["event_id"] == "4" and kept[-1]["attempts_dropped"] > 0
    short = trimmed([{"event_id": "a", "attempts": [attempt]}])
    assert short == [{"event_id": "a", "attempts": [attempt], "attempts_dropped": 0}]
