"""One real stack for the reliability tests, which kill, restart and abuse its processes.

Kept apart from the contract suite's stacks so that killed workers and restarted servers
never leak into other tests. SQLite, the default `dspy-service up` database (the harder
case for restarts). Limits are lowered so hostile jobs hit them quickly, and the worker
environment carries a canary provider key that jobs must never see.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from deployments.stack import Stack, StackConfig
from dspy_service.settings import ServiceSettings
from tests.integration.conftest import RunningStack, free_port, start_stack

TERMINAL = {"success", "failed", "cancelled"}
CANARY_KEY = "sk-canary-worker-secret-5f4e3d"
JOB_SLOTS = 4

STACK_ENV = {
    "OPENAI_API_KEY": CANARY_KEY,  # a provider key in the worker's environment
    "AWS_SECRET_ACCESS_KEY": CANARY_KEY,
    "DSPY_SERVICE_JOB_MEMORY_MB": "2048",
    "DSPY_SERVICE_JOB_OUTPUT_LIMIT_MB": "1",
    "DSPY_SERVICE_JOB_PRINT_LIMIT_MB": "0.25",
    "DSPY_SERVICE_JOB_MAX_TASKS": "256",
    "DSPY_SERVICE_ZOMBIE_AFTER_SECONDS": "45",
    "DSPY_SERVICE_STUCK_PENDING_SECONDS": "40",
    "DSPY_SERVICE_STUCK_JOB_SWEEP_SECONDS": "5",
    "DSPY_SERVICE_MAX_REQUEST_MB": "2",
    "DSPY_SERVICE_MAX_DATASET_ROWS": "5000",
    "DSPY_SERVICE_JOB_TIMEOUT_SECONDS": "3600",
    "DSPY_SERVICE_LM_NUM_RETRIES": "4",
}


class ReliabilityStack(RunningStack):
    @property
    def prefect_url(self) -> str:
        return self.stack.config.prefect_api_url

    def submit(self, payload: dict, **kwargs) -> str:
        response = self.api.post("/run", json=payload, **kwargs)
        assert response.status_code == 201, response.text
        return response.json()["job_id"]

    def flow_run(self, job_id: str) -> dict:
        return httpx.get(f"{self.prefect_url}/flow_runs/{job_id}", timeout=30).json()

    def wait_terminal(self, job_id: str, timeout: float = 180) -> dict:
        return self.wait_for_status(job_id, TERMINAL, timeout=timeout)

    def wait_state(self, job_id: str, state_types: set[str], timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        run: dict = {}
        while time.monotonic() < deadline:
            run = self.flow_run(job_id)
            if run.get("state_type") in state_types:
                return run
            time.sleep(0.1)
        raise AssertionError(f"{job_id} not in {state_types} after {timeout}s: {run.get('state')}")

    def processes(self, job_id: str, timeout: float = 90) -> JobProcesses:
        """The job's engine (it logs its pid), its supervisor and the supervisor's relay parent."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in self.api.get(f"/jobs/{job_id}/logs").json():
                match = re.search(r"\(process (\d+) on ", entry["message"])
                if match:
                    engine = int(match.group(1))
                    supervisor = parent_of(engine)
                    return JobProcesses(engine=engine, supervisor=supervisor, relay=parent_of(supervisor))
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} never logged its process id")

    def worker_pid(self) -> int:
        process = self.stack.workers[0].process
        assert process is not None and process.poll() is None, "the worker is not running"
        return process.pid

    def restart_worker(self) -> None:
        worker = self.stack.workers[0]
        if worker.alive:
            worker.stop()
        elif worker.process is not None:
            worker.process.wait(10)
        worker.start(self.env)
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.api.get("/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError("the stack did not become healthy again")


@dataclass
class JobProcesses:
    engine: int
    supervisor: int
    relay: int


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def session_members(session_id: int) -> list[int]:
    """Live processes of a session (the engine starts one; user subprocesses stay in it)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session_id and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


# Package scope: the stack stops when the reliability tests are done instead of idling
# (and taking CPU) through the rest of the suite.
@pytest.fixture(scope="package")
def rstack(tmp_path_factory, local_lm):
    home: Path = tmp_path_factory.mktemp("stack-reliability")
    settings = ServiceSettings(home=home, job_slots=JOB_SLOTS)
    config = StackConfig(settings=settings, api_port=free_port(), prefect_port=free_port())
    stack = Stack(config)
    stack.env.update(STACK_ENV)
    start_stack(stack, home)
    running = ReliabilityStack(stack, "sqlite")
    yield running
    local_lm.set_delay(0)
    local_lm.set_faults(0)
    stack.stop()
