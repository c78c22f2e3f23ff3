"""Reading a Prefect list endpoint in pages it accepts.

The Prefect API answers a `limit` over 200 with 422 (flow runs, logs, variables, block
documents alike), so a longer read is made of several calls. Failures are the reader's:
whatever `read_page` raises propagates.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

PAGE_LIMIT = 200  # the Prefect API's largest `limit`

PageReader = Callable[[int, int], Awaitable[list[Any]]]  # (limit, offset) -> items


async def read_in_pages(read_page: PageReader, *, limit: int | None, offset: int = 0) -> list[Any]:
    """Up to `limit` items (all when None) from `offset` on, in calls of at most
    PAGE_LIMIT; stops at the first short page."""
    items: list[Any] = []
    while limit is None or len(items) < limit:
        size = PAGE_LIMIT if limit is None else min(PAGE_LIMIT, limit - len(items))
        page = await read_page(size, offset + len(items))
        items.extend(page)
        if len(page) < size:
            break
    return items
