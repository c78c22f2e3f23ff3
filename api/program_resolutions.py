"""What program names resolved to, per API replica: the predict path's Prefect read, saved.

Predicting through a registered program first resolves the name the caller gave (a version
number, an alias, or `latest`) to a version entry, which costs one or two Prefect Variable
reads: most of what the API adds to a warm prediction. This replica keeps each resolution
for `program_resolve_cache_seconds` (default 5 s, like the token cache; 0 turns it off). A
shorter time would make a steady caller pay the read again every few calls (measured: at
1 s and two calls a second per program, half of them read).

Consistency rule: every change made through this replica (register, delete a version, move
or delete an alias) drops the program's entries at once, so its own callers never see a
stale answer. A change made through another replica, or by a schedule's registration on the
job side, is seen within the cache time: a version deleted through another replica may
still answer predictions here for up to that long.

Keys carry the owner, so one user's entry never answers another's request. The cache is
bounded (`MOST_ENTRIES`); expired entries are dropped when it is full.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import Request

from dspy_service.program_store import VersionEntry
from dspy_service.settings import get_settings

MOST_ENTRIES = 10_000
Key = tuple[str, str, int | None, str | None]


class ProgramResolutions:
    """(owner, name, version, alias) -> the version entry it resolved to, until it expires."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._entries: dict[Key, tuple[VersionEntry, float]] = {}

    async def resolve(
        self, owner: str, name: str, version: int | None, alias: str | None,
        read: Callable[[], Awaitable[VersionEntry]],
    ) -> VersionEntry:
        """The cached entry, or `read()`'s (whose errors, e.g. not found, are never cached)."""
        key = (owner, name, version, alias)
        now = time.monotonic()
        found = self._entries.get(key)
        if found is not None and found[1] > now:
            return found[0]
        entry = await read()
        if self.seconds > 0:
            if len(self._entries) >= MOST_ENTRIES:
                self._entries = {k: v for k, v in self._entries.items() if v[1] > now}
                if len(self._entries) >= MOST_ENTRIES:
                    self._entries.clear()
            self._entries[key] = (entry, time.monotonic() + self.seconds)
        return entry

    def forget(self, owner: str, name: str) -> None:
        """Drop every resolution of `owner`'s program `name` (after a change through this replica)."""
        self._entries = {k: v for k, v in self._entries.items() if (k[0], k[1]) != (owner, name)}


def program_resolutions(request: Request) -> ProgramResolutions:
    state = request.app.state
    if getattr(state, "program_resolutions", None) is None:
        state.program_resolutions = ProgramResolutions(get_settings().program_resolve_cache_seconds)
    return state.program_resolutions
