"""A cancelled job's engine must not start running.

Prefect lets a flow run leave Cancelled for Running (that is how a finished run is run
again), and the API cancels a Pending run outright. So an engine that was still starting
when its user cancelled the pending job would run the job anyway, and after the user's
DELETE its task-run events would name a deleted run, which Prefect's task-run recorder
retries for minutes (SQLite: FOREIGN KEY constraint failed) while every other run's
events wait behind them.

The job's Prefect proxy therefore answers the engine's proposal of Running for its own
run with Prefect's ABORT while that run is Cancelled or Cancelling; Prefect's engine then
exits quietly (exit 0) and the run stays as its user left it. When the run cannot be read,
the proposal goes through as before: Prefect decides.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from deployments.runtime.prefect_scope import same_id, split_path

STOPPED_STATES = {"CANCELLED", "CANCELLING"}
ABORTED = {
    "state": None,
    "status": "ABORT",
    "details": {"type": "abort_details", "reason": "the job was cancelled before it started"},
}


def proposes_running(flow_run_id: str, method: str, path: str, body: bytes | None) -> bool:
    """The request proposes Running for the job's own flow run."""
    parts = split_path(path)
    if method != "POST" or parts is None or len(parts) != 3 or parts[0] != "flow_runs" or parts[2] != "set_state":
        return False
    try:
        document: Any = json.loads(body or b"null")
    except ValueError:
        return False
    state = document.get("state") if isinstance(document, dict) else None
    return same_id(parts[1], flow_run_id) and isinstance(state, dict) and state.get("type") == "RUNNING"


async def cancelled_before_start(client: httpx.AsyncClient, run_url: str) -> bool:
    """The run is Cancelled or Cancelling now (False when it cannot be read)."""
    try:
        response = await client.get(run_url)
    except httpx.HTTPError:
        return False
    if response.status_code != 200:
        return False
    try:
        state = (response.json() or {}).get("state") or {}
    except ValueError:
        return False
    return state.get("type") in STOPPED_STATES
