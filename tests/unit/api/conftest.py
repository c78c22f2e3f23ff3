"""Fixtures of the API's unit tests."""

from __future__ import annotations

import pytest

from dspy_service.settings import get_settings


@pytest.fixture
def egress_allow(monkeypatch):
    """`egress_allow("127.0.0.1:8765", ...)`: the API reads these DSPY_SERVICE_EGRESS_ALLOW
    entries from now on (settings are re-read, and again after the test)."""

    def allow(*entries: str) -> None:
        monkeypatch.setenv("DSPY_SERVICE_EGRESS_ALLOW", ",".join(entries))
        get_settings.cache_clear()

    yield allow
    get_settings.cache_clear()
