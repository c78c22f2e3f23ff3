"""Publish a job's small facts (scores, usage, progress) as labels on its flow run."""

from __future__ import annotations

import logging
from typing import Any

from prefect.client.orchestration import get_client

from dspy_service import run_labels

logger = logging.getLogger("dspy_service.reporting")


def publish_labels(flow_run_id: str | None, values: dict[str, Any]) -> None:
    """Best effort: a label that fails to reach the server must not fail the job."""
    if not flow_run_id:
        return
    labels = {key: run_labels.encode(value) for key, value in values.items() if value is not None}
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run_labels(flow_run_id, labels)
    except Exception as exc:  # noqa: BLE001
        logger.warning("could not update flow-run labels: %s", exc)
