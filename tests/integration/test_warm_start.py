"""Warm start (DSPY_SERVICE_WARM_START): jobs fork from the worker's pre-imported zygote
and keep every guarantee of a cold job process.

A stack of its own (SQLite, one worker with its zygote, the reliability suite's hostile
settings: a canary provider key in the worker's environment, lowered limits). The checks
are the contract and hostile-code suites' own (from tests.support). The engine is a fork of
the warm supervisor only with DSPY_SERVICE_SANDBOX=off, which this stack runs with; with the
sandbox on (the default) jobs run in warm sandboxes: tests/integration/test_warm_sandboxes.py.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from deployments.runtime.procfs import cmdline_of, parent_of, process_gone
from tests.support.checks import assert_a_job_succeeds_with_its_result
from tests.support.payloads import job_payload, tenant_model
from tests.support.processes import engine_pid, wait_until_gone
from tests.support.reliability import (
    ENV_DUMP,
    SIG,
    SPAWNS_CHILD,
    STACK_ENV,
    assert_environment_scrubbed,
    environment_names,
)
from tests.support.stack import RunningStack

pytestmark = pytest.mark.integration


class WarmStack(RunningStack):
    @property
    def zygote_pid(self) -> int:
        process = self.stack.zygotes[0].process
        assert process is not None and process.poll() is None, "the zygote is not running"
        return process.pid


@pytest.fixture(scope="module")
def wstack(tmp_path_factory, local_lm):
    home = tmp_path_factory.mktemp("stack-warm")
    running = WarmStack.start(home, job_slots=2, env=STACK_ENV, warm_start=True, sandbox="off")
    yield running
    local_lm.set_delay(0)
    running.stop()


def cmdline(pid: int) -> str:
    return cmdline_of(pid) or ""


def test_a_warm_job_succeeds_with_the_contract_result(wstack, local_lm):
    # The contract suite's own end-to-end check: status sequence, result, logs at the
    # Prefect server, artifact, the six task runs.
    assert_a_job_succeeds_with_its_result(wstack, local_lm)


def test_the_engine_is_forked_from_the_zygote_not_exec(wstack, local_lm):
    local_lm.set_delay(300)
    try:
        job_id = wstack.submit(job_payload(local_lm.url, rows=20, model_config=tenant_model(local_lm.url)))
        procs = wstack.processes(job_id)  # the engine logs its pid
        supervisor = parent_of(procs.engine)
        assert supervisor == procs.supervisor
        # The worker's child is still the relay; the supervisor is the zygote's child and
        # the engine the supervisor's, all running the zygote's interpreter image: no
        # `python -m prefect.engine` (nor the supervisor's fork + import) was exec'd.
        assert "deployments.runtime.relay" in cmdline(procs.relay)
        assert parent_of(procs.relay) == wstack.worker_pid()
        assert parent_of(supervisor) == wstack.zygote_pid
        assert "deployments.runtime.zygote" in cmdline(supervisor)
        assert "deployments.runtime.zygote" in cmdline(procs.engine)
        assert "prefect.engine" not in cmdline(procs.engine)
        assert os.getsid(procs.engine) == procs.engine  # a session of its own, as cold
        job = wstack.wait_terminal(job_id)
    finally:
        local_lm.set_delay(0)
    assert job["status"] == "success", job
    worker_log = wstack.stack.workers[0].log_path.read_text(errors="replace")
    assert f"forked engine {procs.engine}" in worker_log
    # How much faster pickup -> Running gets is measured in bench/ (docs/BENCHMARKS.md), not
    # asserted here: a timed bound only measures how busy the test machine is.


def test_cancel_kills_the_warm_job_tree(wstack, local_lm):
    local_lm.set_delay(1500)
    try:
        job_id = wstack.submit(job_payload(local_lm.url, rows=60, module_name="cot", signature_code=SPAWNS_CHILD))
        procs = wstack.processes(job_id)
        wstack.wait_for_status(job_id, {"running"}, timeout=60)
        time.sleep(1)
        tree = [procs.relay, procs.supervisor, *procs.job_session()]
        assert len(tree) >= 4, f"expected relay, supervisor, engine and the user's child: {tree}"
        assert wstack.api.post(f"/jobs/{job_id}/cancel").status_code == 200
        wait_until_gone(tree, timeout=10)
        wstack.wait_state(job_id, {"CANCELLED"}, timeout=30)
    finally:
        local_lm.set_delay(0)
    job = wstack.api.get(f"/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["message"].startswith("cancelled by the user")
    assert not process_gone(wstack.zygote_pid)


def test_engine_sigkill_fails_the_job_and_the_zygote_serves_the_next(wstack, local_lm):
    zygote = wstack.zygote_pid
    local_lm.set_delay(1000)
    try:
        job_id = wstack.submit(job_payload(local_lm.url, rows=60, module_name="cot"))
        procs = wstack.processes(job_id)
        wstack.wait_for_status(job_id, {"running"}, timeout=60)
        os.kill(procs.engine, signal.SIGKILL)
        job = wstack.wait_terminal(job_id, timeout=30)
    finally:
        local_lm.set_delay(0)
    assert job["status"] == "failed" and "job process was killed (SIGKILL)" in job["message"], job
    assert wstack.zygote_pid == zygote
    after = wstack.submit(job_payload(local_lm.url, rows=20))
    assert wstack.wait_terminal(after)["status"] == "success"


# What a forked engine could find of the worker's environment beyond os.environ: the
# environment its image was exec'd with, and any string left in its objects.
# (The secret is spelled in two halves: the job's own code must not contain it.)
FIND_SECRETS = """import gc
text = "sk-" + "canary"
secret = text.encode()
found = []
if secret in open("/proc/self/environ", "rb").read():
    found.append("proc-environ")
for obj in gc.get_objects():
    if isinstance(obj, dict):
        for value in list(obj.values()):
            if value is text or value is secret:
                continue  # this code's own needles (in its globals)
            if isinstance(value, str) and text in value or isinstance(value, bytes) and secret in value:
                found.append("object")
                break
    if len(found) > 1:
        break
raise RuntimeError("SECRETS " + (" ".join(found) or "none"))
"""


def test_no_worker_secret_is_left_in_the_forked_engine(wstack, local_lm):
    job_id = wstack.submit(job_payload(local_lm.url, rows=20, signature_code=FIND_SECRETS + SIG))
    job = wstack.wait_terminal(job_id)
    assert "RuntimeError: SECRETS none" in (job["message"] or ""), job


def test_the_warm_job_environment_is_scrubbed(wstack, local_lm):
    job_id = wstack.submit(job_payload(local_lm.url, rows=20, signature_code=ENV_DUMP + SIG))
    job = wstack.wait_terminal(job_id)
    assert job["status"] == "failed" and "RuntimeError: ENV" in job["message"], job
    # The hostile-code suite's own assertions (canary key, provider variables, what stays).
    assert_environment_scrubbed(job["message"])
    names = environment_names(job["message"])
    assert "DSPY_SERVICE_ZYGOTE_SOCKET" not in names
    # The engine read the run's own id and API from its environment, not the zygote's.
    assert "PREFECT__FLOW_RUN_ID" in names


def test_a_zygote_crash_neither_hangs_nor_fails_jobs(wstack, local_lm):
    """Last in the module: it leaves the stack without a zygote. The running job (its
    supervisor is already forked) finishes; the next job starts cold, saying so."""
    local_lm.set_delay(300)
    try:
        running = wstack.submit(job_payload(local_lm.url, rows=20, model_config=tenant_model(local_lm.url)))
        wstack.processes(running)
        os.kill(wstack.zygote_pid, signal.SIGKILL)
        wstack.stack.zygotes[0].process.wait(10)
        assert wstack.wait_terminal(running, timeout=90)["status"] == "success"
    finally:
        local_lm.set_delay(0)
    cold = wstack.submit(job_payload(local_lm.url, rows=20))
    assert wstack.wait_terminal(cold, timeout=90)["status"] == "success"
    engine = engine_pid(wstack.api, cold, timeout=60)
    worker_log = wstack.stack.workers[0].log_path.read_text(errors="replace")
    assert "warm start unavailable" in worker_log and f"started engine {engine}" in worker_log
