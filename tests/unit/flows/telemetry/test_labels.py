"""What a job writes as labels on its flow run: scalars as they are, objects as JSON."""

from __future__ import annotations

import json

from dspy_service import contract
from flows.telemetry.labels import champion_labels, publish_labels


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
