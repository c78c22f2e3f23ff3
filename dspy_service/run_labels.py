"""Small per-job facts kept as Prefect flow-run labels.

Labels live on the flow-run row, so a job listing reads them with the runs themselves:
no result, log or dataset is loaded to show scores, progress and counts. The flow writes
them (flows/reporting.py); the API reads them (api/). They also show in the Prefect UI.
"""

from __future__ import annotations

import json
from typing import Any

PREFIX = "dspy."
BASELINE_TEST_METRIC = "dspy.baseline_test_metric"
OPTIMIZED_TEST_METRIC = "dspy.optimized_test_metric"
LATEST_METRICS = "dspy.latest_metrics"  # JSON object
ESTIMATED_REMAINING = "dspy.estimated_remaining"  # seconds
PROGRESS_COUNT = "dspy.progress_count"
LOG_COUNT = "dspy.log_count"
USAGE = "dspy.usage"  # JSON object: calls, tokens, cost
STAGE = "dspy.stage"
SCHEDULE_ID = "dspy.schedule_id"
DATASET_ROWS = "dspy.dataset_rows"  # rows the job read (inline or from its dataset_source)
DATASET_SHA256 = "dspy.dataset_sha256"  # hash of those rows (tasks/data.py content_hash)
CHAMPION_PROMOTED = "dspy.champion_promoted"  # runs of a schedule: did the gate promote it
CHAMPION_SCORE = "dspy.champion_score"  # the previous champion re-scored on this test split
CHAMPION_PREVIOUS = "dspy.champion_previous_job_id"


# Flow-run tags (server-side filters; labels cannot be filtered on in Prefect 3.9).
SERVICE_TAG = "dspy-service"
USER_TAG_PREFIX = "user:"


def user_tag(username: str) -> str:
    return f"{USER_TAG_PREFIX}{username}"


def encode(value: Any) -> Any:
    """Label values are scalars; objects travel as JSON text."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), default=str)
    return value


def decode_json(labels: dict[str, Any], key: str, default: Any) -> Any:
    raw = labels.get(key)
    if not isinstance(raw, str):
        return default
    try:
        return json.loads(raw)
    except ValueError:
        return default


def number(labels: dict[str, Any], key: str) -> float | None:
    value = labels.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
