"""The client's SSE parser, its resume across dropped connections, and what the bar shows."""

from __future__ import annotations

import httpx
import pytest

from dspy_service.client.connection import Connection
from dspy_service.client.errors import InvalidRequest, NotFound, error_from_response
from dspy_service.client.progress import JobProgressView
from dspy_service.client.sse import Event, EventParser, follow_events


def parse(text: str) -> list[Event]:
    parser = EventParser()
    return [event for line in text.split("\n") if (event := parser.feed(line)) is not None]


def test_parser_reads_typed_json_events_and_drops_comments():
    events = parse(
        'retry: 2000\n\n: keepalive\n\nid: c1\nevent: status\ndata: {"status": "running"}\n\n'
        'event: usage\ndata: {"total": {"total_tokens": 5}}\n\nid: c2\nevent: log\ndata: {"message":\ndata: "x"}\n\n'
    )
    assert events == [
        Event("status", {"status": "running"}, "c1"),
        Event("usage", {"total": {"total_tokens": 5}}, None),
        Event("log", {"message": "x"}, "c2"),
    ]


def stream_of(*bodies: str):
    """A transport whose n-th GET of the events answers bodies[n] (then drops), recording
    the Last-Event-ID each request sent."""
    sent: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("Last-Event-ID"))
        return httpx.Response(200, text=bodies[len(sent) - 1], headers={"content-type": "text/event-stream"})

    return handler, sent


def test_follow_resumes_after_the_last_id_and_stops_after_the_final_event(monkeypatch):
    monkeypatch.setattr("dspy_service.client.sse.RECONNECT_DELAY", 0)
    first = 'id: a\nevent: status\ndata: {"status": "running"}\n\nid: b\nevent: progress\ndata: {}\n\n'
    second = 'event: usage\ndata: {}\n\nid: c\nevent: result\ndata: {"status": "success"}\n\n'
    handler, sent = stream_of(first, second)
    connection = Connection("http://service", token="t")
    connection.http = httpx.Client(base_url="http://service", transport=httpx.MockTransport(handler))
    events = list(follow_events(connection, "job-1"))
    assert [e.id for e in events] == ["a", "b", None, "c"]
    assert sent == [None, "b"]


def test_follow_gives_up_on_a_stream_that_never_sends_anything(monkeypatch):
    monkeypatch.setattr("dspy_service.client.sse.RECONNECT_DELAY", 0)
    connection = Connection("http://service", token="t")
    connection.http = httpx.Client(
        base_url="http://service", transport=httpx.MockTransport(lambda r: httpx.Response(200, text=": keepalive\n\n"))
    )
    with pytest.raises(Exception, match="ends without events"):
        list(follow_events(connection, "job-1", max_failures=3))


def test_api_refusals_become_typed_errors_naming_the_field():
    refused = httpx.Response(
        422, json={"error": "invalid_request", "detail": [{"field": "model_config.name", "message": "Field required"}]}
    )
    error = error_from_response(refused)
    assert isinstance(error, InvalidRequest) and error.field == "model_config.name"
    assert str(error) == "model_config.name: Field required (422)"
    job_error = error_from_response(
        httpx.Response(400, json={"detail": "metric_code has no metric", "field": "metric_code"})
    )
    assert job_error.field == "metric_code"
    assert isinstance(error_from_response(httpx.Response(404, json={"detail": "job x not found"})), NotFound)


def test_the_bar_shows_stage_phase_best_score_eta_tokens_and_cost():
    view = JobProgressView()
    view.update(Event("status", {"status": "running"}, "1"))
    metrics = {
        "stage": "compile",
        "tqdm_desc": "GEPA iterations",
        "job_percent": 42.5,
        "best_score": 0.75,
        "job_remaining": 95,
    }
    view.update(Event("progress", {"event": "progress", "metrics": metrics}, "2"))
    view.update(Event("usage", {"total": {"total_tokens": 12345, "cost": 0.0123}}))
    view.update(Event("progress", {"event": "progress", "metrics": {"stage": "compile", "job_percent": 40.0}}, "3"))
    assert view.percent == 42.5  # never goes back
    assert view.description() == "running | compile | GEPA iterations"
    assert view.postfix() == {"best": "0.75", "eta": "1:35", "tokens": "12,345", "cost": "$0.0123"}
    view.update(Event("result", {"status": "success"}, "4"))
    assert view.percent == 100.0 and view.description() == "success"
