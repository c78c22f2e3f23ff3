"""What a job writes as labels on its flow run: scalars as they are, objects as JSON."""

from __future__ import annotations

import json
from contextlib import contextmanager

from dspy_service import contract
from flows.telemetry import labels
from flows.telemetry.labels import champion_labels, publish_labels, shared_label_client


class RecordingClient:
    """Records the label writes a Prefect client would send; the first `failures` raise."""

    def __init__(self, failures: int = 0) -> None:
        self.writes: list[tuple[str, dict]] = []
        self.failures = failures

    def update_flow_run_labels(self, flow_run_id: str, labels: dict) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("503 Service Unavailable")
        self.writes.append((flow_run_id, labels))


def test_labels_are_scalars_and_objects_travel_as_json():
    client = RecordingClient()
    publish_labels(
        "run-1",
        {contract.STAGE: "compile-program", contract.USAGE: {"calls": 3}, contract.ESTIMATED_REMAINING: None},
        client=client,
    )
    [(flow_run_id, labels)] = client.writes
    assert flow_run_id == "run-1"
    assert labels.keys() == {contract.STAGE, contract.USAGE}, "unknown values are not written"
    assert labels[contract.STAGE] == "compile-program" and json.loads(labels[contract.USAGE]) == {"calls": 3}


def test_a_failed_label_write_does_not_fail_the_job(caplog):
    client = RecordingClient(failures=1)
    publish_labels("run-1", {contract.STAGE: "evaluate-programs"}, client=client)
    assert client.writes == [] and "could not update flow-run labels" in caplog.text


def test_outside_a_flow_run_nothing_is_written():
    client = RecordingClient()
    publish_labels(None, {contract.STAGE: "compile-program"}, client=client)
    assert client.writes == []


def test_the_champion_gate_decision_as_labels():
    assert champion_labels(None) == {}
    decision = {"promoted": False, "champion_score": 0.8, "champion_job_id": "job-0"}
    assert champion_labels(decision) == {
        contract.CHAMPION_PROMOTED: False,
        contract.CHAMPION_SCORE: 0.8,
        contract.CHAMPION_PREVIOUS: "job-0",
    }
    first = champion_labels({"promoted": True})
    assert first[contract.CHAMPION_PROMOTED] is True and first[contract.CHAMPION_PREVIOUS] is None


def test_label_writes_in_a_shared_label_client_share_one_client(monkeypatch):
    opened: list[RecordingClient] = []
    closed: list[RecordingClient] = []

    @contextmanager
    def one_client():
        client = RecordingClient()
        opened.append(client)
        yield client
        closed.append(client)

    monkeypatch.setattr(labels, "sync_prefect_client", one_client)
    with shared_label_client():
        publish_labels("run-1", {contract.STAGE: "load-and-split-data"})
        publish_labels("run-1", {contract.STAGE: "compile-program"})
        assert closed == [], "the shared client stays open until the flow's body ends"
    assert len(opened) == 1 and closed == opened
    assert [labels[contract.STAGE] for _, labels in opened[0].writes] == ["load-and-split-data", "compile-program"]
    publish_labels("run-1", {contract.STAGE: "evaluate-programs"})
    assert len(opened) == 2, "outside the flow's body each write opens (and closes) its own client"


def test_a_shared_client_that_cannot_be_opened_does_not_fail_the_job(monkeypatch, caplog):
    def unreachable():
        raise OSError("connection refused")

    monkeypatch.setattr(labels, "sync_prefect_client", unreachable)
    with shared_label_client():
        publish_labels("run-1", {contract.STAGE: "compile-program"})
    assert "could not update flow-run labels" in caplog.text
