"""The program server's pool of loaded program versions: one child process per
(owner, program, version), loaded once, LRU-evicted, closed when idle.

`ProgramPool.predict(key, inputs)` finds the key's child or loads it (`load(key)` gives
the document and the model config with secrets; concurrent first requests of one key
share one load), then runs the prediction on it (the child's semaphore bounds the
predictions in flight per program). Loading a key beyond `max_programs` closes the least
recently used children that have nothing in flight (busy ones are closed by a later load
or the idle reaper once they are done, so the pool may exceed the count briefly). The
reaper (`reap_forever`) closes children unused for `idle_seconds`.

How it fails: `ChildExited` when the child died under a request (the child is dropped
from the pool: the next request loads a fresh one), `LoadFailed`, `PredictFailed` (child.py),
and whatever `load` raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from deployments.program_server.child import ChildExited, ProgramChild


@dataclass(frozen=True)
class ProgramKey:
    owner: str
    name: str
    version: int
    document_sha256: str  # a version is immutable; a changed document is another key
    document_url: str = ""

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"


Loader = Callable[[ProgramKey], Awaitable[tuple[dict[str, Any], dict[str, Any]]]]
ChildFactory = Callable[[ProgramKey], ProgramChild]


class ProgramPool:
    def __init__(self, load: Loader, make_child: ChildFactory, max_programs: int, idle_seconds: float):
        self.load = load
        self.make_child = make_child
        self.max_programs = max_programs
        self.idle_seconds = idle_seconds
        self.children: OrderedDict[ProgramKey, ProgramChild] = OrderedDict()
        self.loading: dict[ProgramKey, asyncio.Task] = {}
        self.loads = 0  # children started, for status and tests

    async def child(self, key: ProgramKey) -> ProgramChild:
        """The key's live child, loaded if needed; the most recently used from now on."""
        child = self.children.get(key)
        if child is not None and not child.alive:
            await self.drop(key, child)
            child = None
        if child is not None:
            self.children.move_to_end(key)
            return child
        task = self.loading.get(key)
        if task is None:
            task = asyncio.create_task(self._load(key))
            self.loading[key] = task
            task.add_done_callback(lambda _: self.loading.pop(key, None))
        return await asyncio.shield(task)

    async def _load(self, key: ProgramKey) -> ProgramChild:
        document, model_config = await self.load(key)
        child = self.make_child(key)
        await child.start(document, model_config)
        self.loads += 1
        self.children[key] = child
        await self.evict()
        return child

    async def predict(self, key: ProgramKey, inputs: dict[str, Any]) -> dict[str, Any]:
        child = await self.child(key)
        try:
            return await child.predict(inputs)
        except ChildExited:
            await self.drop(key, child)
            raise

    async def drop(self, key: ProgramKey, child: ProgramChild) -> None:
        if self.children.get(key) is child:
            del self.children[key]
        await child.close()

    async def evict(self) -> None:
        """Close least recently used idle children while more than `max_programs` are loaded."""
        for key, child in list(self.children.items()):
            if len(self.children) <= self.max_programs:
                return
            if child.in_flight == 0:
                await self.drop(key, child)

    async def reap_idle(self, now: float | None = None) -> list[ProgramKey]:
        """Close the children unused for `idle_seconds`; the keys closed."""
        now = time.monotonic() if now is None else now
        closed = []
        for key, child in list(self.children.items()):
            if not child.alive or (child.in_flight == 0 and now - child.last_used >= self.idle_seconds):
                await self.drop(key, child)
                closed.append(key)
        await self.evict()
        return closed

    async def reap_forever(self) -> None:
        interval = max(0.2, min(self.idle_seconds / 4, 30.0))
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await self.reap_idle()

    def status(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [
            {"owner": key.owner, "name": key.name, "version": key.version, "pid": child.pid,
             "in_flight": child.in_flight, "idle_seconds": round(now - child.last_used, 3), "alive": child.alive}
            for key, child in self.children.items()
        ]

    async def close(self) -> None:
        for key, child in list(self.children.items()):
            await self.drop(key, child)
