"""`AsyncJob`: the asyncio twin of `Job` (jobs.py), for `AsyncClient`; same methods, awaited.

How it fails: as `Job` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from dspy_service.client.connection import AsyncConnection
from dspy_service.client.errors import JobFailed
from dspy_service.client.jobs import TERMINAL
from dspy_service.client.program import build_program
from dspy_service.client.sse import Event, afollow_events


class AsyncJob:
    def __init__(self, connection: AsyncConnection, job_id: str, summary: dict[str, Any] | None = None):
        self._connection = connection
        self.id = job_id
        self._last_summary = summary

    def __repr__(self) -> str:
        status = self._last_summary.get("status") if self._last_summary else "?"
        return f"<AsyncJob {self.id} {status}>"

    async def status(self) -> str:
        return (await self.summary())["status"]

    async def summary(self) -> dict[str, Any]:
        self._last_summary = await self._connection.request("GET", f"/jobs/{self.id}/summary")
        return self._last_summary

    async def detail(self) -> dict[str, Any]:
        return await self._connection.request("GET", f"/jobs/{self.id}")

    async def logs(self) -> list[dict[str, Any]]:
        return await self._connection.request("GET", f"/jobs/{self.id}/logs")

    async def follow_logs(self) -> AsyncIterator[dict[str, Any]]:
        async for event in self.events():
            if event.type == "log":
                yield event.data

    def events(self, last_event_id: str | None = None) -> AsyncIterator[Event]:
        return afollow_events(self._connection, self.id, last_event_id)

    async def wait(self, progress: bool = True, timeout: float | None = None, file: Any = None) -> dict[str, Any]:
        from dspy_service.client.progress import JobProgressBar

        bar = JobProgressBar(self.id, file=file) if progress else None

        async def follow() -> dict[str, Any]:
            async for event in self.events():
                if bar is not None:
                    bar.update(event)
                if event.final:
                    return event.data if isinstance(event.data, dict) else await self.summary()
            return await self.summary()

        try:
            self._last_summary = await asyncio.wait_for(follow(), timeout)
        except TimeoutError:
            raise TimeoutError(f"job {self.id} did not end within {timeout:.0f} s") from None
        finally:
            if bar is not None:
                bar.close()
        return self._last_summary

    async def result(self) -> dict[str, Any]:
        summary = await self.summary()
        if summary["status"] not in TERMINAL:
            summary = await self.wait(progress=False)
        if summary["status"] != "success":
            raise JobFailed(self.id, summary["status"], summary.get("message"))
        return (await self.detail())["result"]

    async def artifact(self) -> dict[str, Any]:
        return await self._connection.request("GET", f"/jobs/{self.id}/artifact")

    async def program(self) -> Any:
        summary = await self.summary()
        if summary["status"] != "success":
            raise JobFailed(self.id, summary["status"], summary.get("message") or "the program exists after success")
        artifact = await self.artifact()
        return build_program(artifact["program_source"], artifact["program_artifact"].get("program_state"))

    async def cancel(self) -> dict[str, Any]:
        return await self._connection.request("POST", f"/jobs/{self.id}/cancel")

    async def delete(self) -> dict[str, Any]:
        return await self._connection.request("DELETE", f"/jobs/{self.id}")
