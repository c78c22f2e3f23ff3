"""List pages of GET /jobs kept for at most the read model's max age (issue #16), for
when the list index (api/run_index.py) cannot serve them (not loaded yet, off, too many runs).

A page (its runs, their compile marks and the total) is read from Prefect as before and
kept under its query: (status, owner, limit, offset). The owner is part of the key, so a
page is only ever served to a query for the same owner's runs (api/ownership.py decides
the owner, as before). A kept page is served while all of these hold, else Prefect is read:

- the read model's event subscription is up and has not reconnected since the page was read;
- no flow-run event arrived and this replica changed no run since the read started (any
  state change, creation or heartbeat drops every page: a page cannot tell which runs a
  new one would displace);
- the read started at most `max_age` seconds ago (read_model_max_age_seconds, 1 s), which
  bounds what events do not report: a delete or a label PATCH made elsewhere shows within
  max_age, the rule GET /jobs/{id} keeps (api/run_cache.py).

Pure bookkeeping, no I/O. Memory: pages holding at most `max_runs` runs in all (LRU), a
page larger than that is not kept. How it fails: it cannot make a page wrong by more than
max_age; with the subscription down it keeps nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from api.run_cache import RunCache, Token
from api.run_pages import RunPage

# Runs held over all kept pages (a page of the default limit holds 50).
PAGE_CACHE_RUNS = 2000


class PageCache:
    def __init__(self, runs: RunCache, max_runs: int = PAGE_CACHE_RUNS) -> None:
        self.runs = runs
        self.max_runs = max_runs
        self._pages: OrderedDict[Hashable, tuple[RunPage, Token]] = OrderedDict()
        self._held = 0

    def fresh(self, key: Hashable) -> RunPage | None:
        """The page kept under `key` if it may be served; None: read it."""
        kept = self._pages.get(key)
        if kept is None:
            return None
        if not self.runs.unchanged_since(kept[1]):
            self._drop(key)  # it can never be served again
            return None
        self._pages.move_to_end(key)
        return kept[0]

    def store(self, key: Hashable, page: RunPage, token: Token) -> bool:
        """Keep a page read after `token` was taken; False when refused (something changed
        during the read, the subscription is down, or the page is too large)."""
        if len(page.runs) > self.max_runs or not self.runs.unchanged_since(token):
            return False
        self._drop(key)
        self._pages[key] = (page, token)
        self._held += len(page.runs)
        while self._held > self.max_runs:
            self._drop(next(iter(self._pages)))
        return True

    def _drop(self, key: Hashable) -> None:
        kept = self._pages.pop(key, None)
        if kept is not None:
            self._held -= len(kept[0].runs)
