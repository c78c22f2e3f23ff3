"""Publish a job's small facts (scores, usage, progress) as labels on its flow run."""

from __future__ import annotations

import logging
from typing import Any

from prefect.client.orchestration import get_client

from dspy_service import run_labels

logger = logging.getLogger("dspy_service.reporting")


def publish_labels(flow_run_id: str | None, values: dict[str, Any], client: Any = None) -> None:
    """Best effort: a label that fails to reach the server must not fail the job.

    `client`: an open sync Prefect client to reuse (the live reporter keeps one)."""
    if not flow_run_id:
        return
    labels = {key: run_labels.encode(value) for key, value in values.items() if value is not None}
    try:
        if client is not None:
            client.update_flow_run_labels(flow_run_id, labels)
            return
        with get_client(sync_client=True) as own_client:
            own_client.update_flow_run_labels(flow_run_id, labels)
    except Exception as exc:  # noqa: BLE001
        logger.warning("could not update flow-run labels: %s", exc)
