"""One job of the service, as a Python object: read it, follow it, stop it, take its program.

Every property and method is one or a few HTTP calls: nothing is cached but the id, so a
`Job` may be kept and used from any process. How it fails: the API's refusals raise
`ServiceError` subclasses (`NotFound` for a deleted job); `result()` and `program()`
raise `JobFailed` for a job that did not succeed; `wait(timeout=...)` raises TimeoutError.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from dspy_service.client.connection import Connection
from dspy_service.client.errors import JobFailed
from dspy_service.client.program import build_program
from dspy_service.client.sse import Event, follow_events

TERMINAL = frozenset({"success", "failed", "cancelled"})


class Job:
    def __init__(self, connection: Connection, job_id: str, summary: dict[str, Any] | None = None):
        self._connection = connection
        self.id = job_id
        self._last_summary = summary

    def __repr__(self) -> str:
        status = self._last_summary.get("status") if self._last_summary else "?"
        return f"<Job {self.id} {status}>"

    # ---- reads ----------------------------------------------------------------------------
    @property
    def status(self) -> str:
        return self.summary()["status"]

    def summary(self) -> dict[str, Any]:
        self._last_summary = self._connection.request("GET", f"/jobs/{self.id}/summary")
        return self._last_summary

    def detail(self) -> dict[str, Any]:
        """GET /jobs/{id}: the summary's fields plus progress events, logs and the result."""
        return self._connection.request("GET", f"/jobs/{self.id}")

    def logs(self, follow: bool = False) -> list[dict[str, Any]] | Iterator[dict[str, Any]]:
        """The log entries so far; with `follow`, an iterator that goes on until the job ends."""
        if not follow:
            return self._connection.request("GET", f"/jobs/{self.id}/logs")
        return (event.data for event in self.events() if event.type == "log")

    def events(self, last_event_id: str | None = None) -> Iterator[Event]:
        """The job's events from the start (or after `last_event_id`) to its final one."""
        return follow_events(self._connection, self.id, last_event_id)

    def wait(self, progress: bool = True, timeout: float | None = None, file: Any = None) -> dict[str, Any]:
        """Follow the job to its end; returns its final summary. `progress` draws a live bar."""
        from dspy_service.client.progress import JobProgressBar

        deadline = None if timeout is None else time.monotonic() + timeout
        bar = JobProgressBar(self.id, file=file) if progress else None
        try:
            for event in self.events():
                if bar is not None:
                    bar.update(event)
                if event.final:
                    self._last_summary = event.data if isinstance(event.data, dict) else self.summary()
                    return self._last_summary
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {self.id} did not end within {timeout:.0f} s")
        finally:
            if bar is not None:
                bar.close()
        return self.summary()

    def result(self) -> dict[str, Any]:
        """The job's `result` object once it succeeded (waits for the end, no bar)."""
        summary = self.summary()
        if summary["status"] not in TERMINAL:
            summary = self.wait(progress=False)
        if summary["status"] != "success":
            raise JobFailed(self.id, summary["status"], summary.get("message"))
        return self.detail()["result"]

    def artifact(self) -> dict[str, Any]:
        """{program_artifact, program_source}: the JSON state and what rebuilds the module."""
        return self._connection.request("GET", f"/jobs/{self.id}/artifact")

    def program(self) -> Any:
        """The optimized program as a ready `dspy.Module` (no pickle is read)."""
        summary = self.summary()
        if summary["status"] != "success":
            raise JobFailed(self.id, summary["status"], summary.get("message") or "the program exists after success")
        artifact = self.artifact()
        return build_program(artifact["program_source"], artifact["program_artifact"].get("program_state"))

    # ---- writes ---------------------------------------------------------------------------
    def cancel(self) -> dict[str, Any]:
        return self._connection.request("POST", f"/jobs/{self.id}/cancel")

    def delete(self) -> dict[str, Any]:
        return self._connection.request("DELETE", f"/jobs/{self.id}")
