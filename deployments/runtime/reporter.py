"""The run's state in the Prefect API, as the supervisor sees and sets it.

`RunReporter` makes the few Prefect API calls the supervisor needs (read the run, set its
state, write a log line) over plain HTTP: importing the Prefect client would add a second
or two of CPU to every job start. Each call is retried while the server is unreachable (it
may be restarting) for up to its patience; after that the call returns None and the
supervisor carries on without it. Without PREFECT_API_URL or a flow run id every call is
a no-op returning None.
"""

from __future__ import annotations

import base64
import datetime as dt
import time
from collections.abc import Mapping
from typing import Any

import httpx


class RunReporter:
    """The few Prefect API calls the supervisor makes about its flow run."""

    def __init__(self, environ: Mapping[str, str], flow_run_id: str | None):
        self.flow_run_id = flow_run_id
        api_url = (environ.get("PREFECT_API_URL") or "").rstrip("/")
        headers = {}
        if environ.get("PREFECT_API_KEY"):
            headers["Authorization"] = f"Bearer {environ['PREFECT_API_KEY']}"
        elif environ.get("PREFECT_API_AUTH_STRING"):
            token = base64.b64encode(environ["PREFECT_API_AUTH_STRING"].encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        self.client = httpx.Client(base_url=api_url, headers=headers, timeout=10) if api_url and flow_run_id else None

    def _call(self, method: str, path: str, patience: float = 90.0, **kwargs: Any) -> Any:
        """One API call, retried while the server is unreachable (it may be restarting)."""
        if self.client is None:
            return None
        deadline = time.monotonic() + patience
        delay = 0.25
        while True:
            try:
                response = self.client.request(method, path, **kwargs)
                if response.status_code < 500:
                    return response.json() if response.status_code < 300 else None
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() + delay > deadline:
                return None
            time.sleep(delay)
            delay = min(delay * 2, 3.0)

    def read_job_timeout(self) -> float | None:
        """The job's own `timeout_seconds` parameter, if it set one."""
        run = self.read_run(patience=10)
        job = ((run or {}).get("parameters") or {}).get("job") or {}
        requested = job.get("timeout_seconds")
        return float(requested) if isinstance(requested, (int, float)) else None

    def read_run(self, patience: float = 90.0) -> dict[str, Any] | None:
        return self._call("GET", f"/flow_runs/{self.flow_run_id}", patience=patience)

    def state_type(self) -> str | None:
        run = self.read_run()
        state = (run or {}).get("state") or {}
        return state.get("type")

    def set_state(self, state_type: str, message: str, name: str | None = None) -> str | None:
        state = {"type": state_type, "message": message}
        if name:
            state["name"] = name
        result = self._call("POST", f"/flow_runs/{self.flow_run_id}/set_state", json={"state": state})
        return (result or {}).get("status")

    def set_tags(self, tags: list[str]) -> None:
        self._call("PATCH", f"/flow_runs/{self.flow_run_id}", json={"tags": tags})

    def log(self, message: str, level: int = 40) -> None:
        entry = {
            "name": "dspy_service.job_process",
            "level": level,
            "message": message,
            "timestamp": dt.datetime.now(dt.UTC).isoformat(),
            "flow_run_id": self.flow_run_id,
        }
        self._call("POST", "/logs/", json=[entry])

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
