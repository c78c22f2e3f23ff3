"""Hostile signature/metric code: only its own job fails, with a clear message.

All hostile jobs and one ordinary job are submitted together and run side by side on one
real worker; then each hostile job's outcome is checked, and that the ordinary job, the
worker and the API came through unharmed.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.support.payloads import job_payload
from tests.support.polling import wait_until
from tests.support.processes import processes_of_runs
from tests.support.reliability import (
    ENV_DUMP,
    FORK_BOMB,
    JOB_SLOTS,
    MEMORY_BOMB,
    SIG,
    assert_environment_scrubbed,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# name -> (request overrides, words the failure message must contain)
HOSTILE = {
    "infinite_loop": (
        {"metric_code": "def metric(gold, pred, trace=None):\n    while True:\n        pass\n", "timeout_seconds": 25},
        ["exceeded its time limit of 25 s"],
    ),
    "memory_bomb": (
        {"signature_code": MEMORY_BOMB + SIG},
        ["ran out of memory", "2048 MB"],
    ),
    "sys_exit": ({"signature_code": "import sys\nsys.exit(3)\n" + SIG}, ["signature_code line 2", "SystemExit"]),
    "os_exit": (
        {"metric_code": "import os\ndef metric(gold, pred, trace=None):\n    os._exit(7)\n"},
        ["exited with code 7 before the job finished"],
    ),
    # In its sandbox the job's parent is the sandbox's own init (pid 1), which ignores it:
    # it cannot reach its supervisor or the worker.
    "kill_parent": (
        {"signature_code": "import os\nos.kill(os.getppid(), 9)\n"
                           "raise RuntimeError(f'alive after killing pid {os.getppid()}')\n" + SIG},
        ["alive after killing pid 1"],
    ),
    "fork_bomb": (
        {"signature_code": FORK_BOMB + SIG},
        ["more than 256 processes/threads"],
    ),
    "read_environ": ({"signature_code": ENV_DUMP + SIG}, ["RuntimeError: ENV"]),
}
NOISY = {
    # 100 MB through print() (Prefect logs) and straight to the stdout file descriptor.
    "print_100mb": {"signature_code": "for i in range(10_000):\n    print(f'{i:05d}' + 'p' * 10_000)\n" + SIG},
    "stdout_100mb": {
        "signature_code": "import os\nfor i in range(10_000):\n    os.write(1, b'w' * 10_000 + b'\\n')\n" + SIG
    },
}


HEALTH_POLL_SECONDS = 2.0


def watch_health(rstack, stop: threading.Event, unhealthy: list[str]) -> None:
    """GET /health every HEALTH_POLL_SECONDS until `stop`; each answer but 200 is recorded."""
    with rstack.client() as client:
        while not stop.wait(HEALTH_POLL_SECONDS):
            try:
                response = client.get("/health")
            except httpx.HTTPError as exc:
                unhealthy.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}")
                continue
            if response.status_code != 200:
                unhealthy.append(f"{time.strftime('%H:%M:%S')} {response.status_code} {response.text}")


@pytest.fixture(scope="module")
def outcomes(rstack, local_lm):
    worker_pid = rstack.worker_pid()
    worker_log = rstack.stack.workers[0].log_path
    log_size_before = worker_log.stat().st_size
    stop, unhealthy = threading.Event(), []
    watcher = threading.Thread(target=watch_health, args=(rstack, stop, unhealthy), daemon=True)
    watcher.start()
    try:
        requests = {name: overrides for name, (overrides, _) in HOSTILE.items()} | NOISY
        ids = {name: rstack.submit(job_payload(local_lm.url, rows=20, **o)) for name, o in requests.items()}
        # The ordinary job goes in once the first hostile wave is running beside it.
        time.sleep(8)
        ids["ordinary"] = rstack.submit(job_payload(local_lm.url, rows=40))
        jobs = {name: rstack.wait_terminal(job_id, timeout=420) for name, job_id in ids.items()}
    finally:
        stop.set()
        watcher.join(30)
    for name, job in jobs.items():
        print(f"{name}: {job['status']} after {job['elapsed']} ({job['started_at']} -> {job['completed_at']})")
    return {
        "jobs": jobs,
        "ids": ids,
        "worker_pid_before": worker_pid,
        "worker_log_growth": worker_log.stat().st_size - log_size_before,
        "unhealthy": unhealthy,
    }


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_job_fails_alone_with_a_clear_message(outcomes, name):
    job = outcomes["jobs"][name]
    assert job["status"] == "failed", job
    for words in HOSTILE[name][1]:
        assert words in (job["message"] or ""), job["message"]


def test_the_job_environment_is_scrubbed(outcomes):
    assert_environment_scrubbed(outcomes["jobs"]["read_environ"]["message"])


def test_printing_100mb_is_capped_and_says_what_was_dropped(rstack, outcomes):
    for name in NOISY:
        assert outcomes["jobs"][name]["status"] == "success", outcomes["jobs"][name]
    logs = rstack.api.get(f"/jobs/{outcomes['ids']['print_100mb']}/logs").json()
    printed = [e for e in logs if e["logger"] == "dspy_service.print"]
    assert sum(len(e["message"]) for e in printed) < 400_000, "printed output reached the logs uncapped"
    notice = next(i for i, e in enumerate(printed) if "dropped" in e["message"] and "print() calls" in e["message"])
    assert printed[0]["message"].startswith("00000p"), "the first prints are kept"
    assert any(e["message"].startswith("09999p") for e in printed[notice:]), "the last prints are kept"
    # Raw stdout of both jobs reached the worker log capped (1 MB each), with a note.
    assert outcomes["worker_log_growth"] < 12_000_000, outcomes["worker_log_growth"]
    # The note closes the job's output: the supervisor writes it once the engine has exited,
    # which is after the engine reported the final state the API showed.
    worker_log = rstack.stack.workers[0].log_path
    note = "of the job's stdout/stderr; the last"
    wait_until(lambda: note in worker_log.read_text(errors="replace"), 30, 0.5, what=f"{note!r} in the worker log")


def test_worker_api_and_the_other_job_are_unaffected(rstack, outcomes):
    # A load balancer polling /health saw the service up throughout: the hostile jobs' load
    # on the Prefect server (SQLite) did not cost the worker its heartbeats.
    assert outcomes["unhealthy"] == []
    ordinary = outcomes["jobs"]["ordinary"]
    assert ordinary["status"] == "success", ordinary
    assert rstack.worker_pid() == outcomes["worker_pid_before"], "the worker was restarted"
    assert rstack.api.get("/health").status_code == 200
    queue = rstack.api.get("/queue").json()
    assert queue["active_jobs"] == 0 and queue["worker_threads"] == JOB_SLOTS
    # Nothing a hostile job started is still running (fork bomb children, orphans).
    run_ids = set(outcomes["ids"].values())
    # The last job's processes exit just after its final state.
    wait_until(lambda: not processes_of_runs(run_ids), 15, 0.5, what=lambda: f"{processes_of_runs(run_ids)} to exit")

