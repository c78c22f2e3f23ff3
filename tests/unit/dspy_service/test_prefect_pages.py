"""Long reads are made of calls the Prefect API accepts (at most 200 items each)."""

from __future__ import annotations

import asyncio

from dspy_service.prefect_pages import PAGE_LIMIT, read_in_pages

STORED = list(range(1000))


def reader(stored: list[int]):
    calls: list[tuple[int, int]] = []

    async def read_page(limit: int, offset: int) -> list[int]:
        assert limit <= PAGE_LIMIT, "the Prefect API answers a larger limit with 422"
        calls.append((limit, offset))
        return stored[offset : offset + limit]

    return read_page, calls


def test_a_limit_over_the_cap_is_read_in_consecutive_pages():
    read_page, calls = reader(STORED)
    assert asyncio.run(read_in_pages(read_page, limit=450, offset=10)) == STORED[10:460]
    assert calls == [(200, 10), (200, 210), (50, 410)]


def test_reading_stops_at_the_first_short_page():
    read_page, calls = reader(STORED[:230])
    assert asyncio.run(read_in_pages(read_page, limit=1000)) == STORED[:230]
    assert calls == [(200, 0), (200, 200)]


def test_no_limit_reads_everything():
    read_page, calls = reader(STORED[:400])
    assert asyncio.run(read_in_pages(read_page, limit=None)) == STORED[:400]
    assert calls[-1] == (200, 400), "an empty page ends a read that filled its pages"
