"""The real small model as the tests start it (dspy_service.testing.real_lm): one slot of
1024 tokens and 2 threads, as on the 2-core CI; a missing `real-lm` extra fails the test,
naming the command that installs it (`make install` does, so CI has it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dspy_service.testing.real_lm import RealLMMissing, RealLMServer

CONTEXT_TOKENS = 1024


def serve_real_lm(log_path: Path, port: int = 0) -> RealLMServer:
    """The model answering on `port` (0: a free one), its llama.cpp log at `log_path`."""
    try:
        return RealLMServer.start(port, context=CONTEXT_TOKENS, threads=2, log_path=log_path)
    except RealLMMissing as exc:
        pytest.fail(str(exc))
