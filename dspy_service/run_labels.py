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
