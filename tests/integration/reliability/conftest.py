"""One real stack for the reliability tests, which kill, restart and abuse its processes.

Kept apart from the contract suite's stacks so that killed workers and restarted servers
never leak into other tests. SQLite, the default `dspy-service up` database (the harder
case for restarts), with the lowered limits and canary key of tests.support.reliability.
"""

from __future__ import annotations

import pytest

from tests.support.reliability import JOB_SLOTS, STACK_ENV
from tests.support.stack import RunningStack, free_port, reachable_by_jobs


@pytest.fixture(scope="package")
def late_lm_port():
    """A free port the jobs of `rstack` may reach, where a test starts an LM only later."""
    port = free_port()
    reachable_by_jobs(f"http://127.0.0.1:{port}")
    return port


# Package scope: the stack stops when the reliability tests are done instead of idling
# (and taking CPU) through the rest of the suite.
@pytest.fixture(scope="package")
def rstack(tmp_path_factory, local_lm, late_lm_port):
    running = RunningStack.start(tmp_path_factory.mktemp("stack-reliability"), job_slots=JOB_SLOTS, env=STACK_ENV)
    yield running
    local_lm.set_delay(0)
    local_lm.set_faults(0)
    running.stop()
