"""The run's state in the Prefect API, as the supervisor sees and sets it.

`RunReporter` makes the few Prefect API calls the supervisor needs (read the run, set its
state, write a log line, read the job's Secret blocks for its sandbox) over plain HTTP:
importing the Prefect client would add seconds of CPU to every job start. Each call is
retried while the server is unreachable (it may be restarting) for up to its patience;
after that the call returns None and the supervisor carries on without it, except a
Secret block read, which raises PrefectUnreachable (a job must not start as if its
secrets were deleted). Without PREFECT_API_URL or a flow run id every call is a no-op
returning None.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from dspy_service.contract import SECRET_BLOCK_TYPE
from dspy_service.tls import default_ssl_context


class PrefectUnreachable(RuntimeError):
    """The Prefect API did not answer within a call's patience."""


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
        self.client = None
        if api_url and flow_run_id:
            self.client = httpx.Client(base_url=api_url, headers=headers, timeout=10, verify=default_ssl_context())

    def _request(self, method: str, path: str, patience: float = 90.0, **kwargs: Any) -> httpx.Response | None:
        """One API call, retried while the server is unreachable or failing (it may be
        restarting); None once its patience is spent."""
        if self.client is None:
            return None
        deadline = time.monotonic() + patience
        delay = 0.25
        while True:
            try:
                response = self.client.request(method, path, **kwargs)
                if response.status_code < 500:
                    return response
            except httpx.HTTPError:
                pass
            if time.monotonic() + delay > deadline:
                return None
            time.sleep(delay)
            delay = min(delay * 2, 3.0)

    def _call(self, method: str, path: str, patience: float = 90.0, **kwargs: Any) -> Any:
        """The JSON answer of a successful call, else None."""
        response = self._request(method, path, patience, **kwargs)
        if response is None or response.status_code >= 300:
            return None
        try:
            return response.json()
        except ValueError:
            return None

    def read_secret_block(self, name: str) -> dict[str, Any] | None:
        """A Secret block's value (None when the block is gone or holds no mapping).
        PrefectUnreachable when the server cannot be asked: a job must not start without
        secrets it names merely because Prefect was restarting."""
        path = f"/block_types/slug/{SECRET_BLOCK_TYPE}/block_documents/name/{quote(name, safe='')}"
        response = self._request("GET", path, params={"include_secrets": "true"})
        if response is None:
            raise PrefectUnreachable(f"the Prefect API could not be reached to read the Secret block {name!r}")
        if response.status_code == 404:
            return None
        if response.status_code >= 300:
            raise PrefectUnreachable(f"the Prefect API answered {response.status_code} reading a Secret block")
        value = ((response.json() or {}).get("data") or {}).get("value")
        if isinstance(value, str):  # Secret.get() reads a JSON string as its value too
            try:
                value = json.loads(value)
            except ValueError:
                return None
        return value if isinstance(value, dict) else None

    def read_job_timeout(self, run: dict[str, Any] | None = None) -> float | None:
        """The job's own `timeout_seconds` parameter, if it set one; from `run` when the
        caller has read the run already (parameters never change), else read now."""
        run = run if run is not None else self.read_run(patience=10)
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
