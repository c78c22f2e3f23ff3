"""`dspy-service demo --real-model`: the demo job on a real small model served on this machine.

For users without an API key who want to see a real LM: `serving_real_model` serves
SmolLM2-135M-Instruct (llama.cpp, the `real-lm` extra) on 127.0.0.1:`port` in a process of
its own while the CLI submits BootstrapFewShot with `predict` on a small sentiment task
(`sentiment_job` of dspy_service.testing.real_lm) to the running service and follows it;
the model stops after. The service's jobs must be allowed to reach that
address: `dspy-service up` allows the default port (DSPY_SERVICE_EGRESS_ALLOW otherwise).
A missing extra is a RealLMMissing naming the pip command; a busy port an OSError.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dspy_service.testing.real_lm import DEMO_PORT, RealLMServer

DESCRIPTION = "BootstrapFewShot on a sentiment task, real model SmolLM2-135M"


@contextlib.contextmanager
def serving_real_model(port: int = DEMO_PORT) -> Iterator[RealLMServer]:
    """The model, answering on 127.0.0.1:`port` meanwhile (its log, named, in the temp dir)."""
    log = Path(tempfile.gettempdir()) / f"dspy-service-real-model-{port}.log"
    print(f"starting SmolLM2-135M-Instruct (llama.cpp) on 127.0.0.1:{port} (its log: {log}) ...", flush=True)
    with RealLMServer.start(port, log_path=log) as server:
        print(f"real model answering on {server.url}", flush=True)
        yield server
