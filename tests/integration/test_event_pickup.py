"""Event-driven pickup (deployments/worker.py, deployments/pickup.py) on a real stack.

A probe worker of our own (`python -m deployments.worker`) on a probe pool of the shared
stack's Prefect server, with a poll interval far longer than the test: a run it picks up
at once was found through the event stream, not by polling. The same worker behind a
proxy that refuses the event stream still picks runs up by polling; behind one that
refuses every label PATCH it still starts its runs at once. The probe's runs
start `true` instead of a job (pickup is all that is checked); the pool, deployment and
runs are deleted afterwards. About 40 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prefect.workers.process import ProcessWorker

from tests.support.polling import wait_until
from tests.support.prefect_tap import PrefectTap

pytestmark = [pytest.mark.integration, pytest.mark.sqlite_only]


@pytest.fixture(scope="module")
def probe(stack):
    """A work pool and deployment of their own on the stack's server; yields (pool, deployment id)."""
    prefect = stack.prefect
    pool = f"pickup-probe-{uuid.uuid4().hex[:8]}"
    template = ProcessWorker.get_default_base_job_template()
    body = {"name": pool, "type": "process", "base_job_template": template}
    prefect.post("/work_pools/", json=body).raise_for_status()
    flow = prefect.post("/flows/", json={"name": "pickup-probe"}).json()
    body = {"name": pool, "flow_id": flow["id"], "work_pool_name": pool, "entrypoint": "none.py:none"}
    deployment = prefect.post("/deployments/", json=body).json()
    runs: list[str] = []
    yield pool, deployment["id"], runs
    for run_id in runs:
        prefect.delete(f"/flow_runs/{run_id}")
    prefect.delete(f"/deployments/{deployment['id']}")
    prefect.delete(f"/work_pools/{pool}")


def start_probe_worker(stack, pool: str, log: Path, query_seconds: int, api_url: str | None = None):
    env = {**stack.env, "PREFECT_WORKER_QUERY_SECONDS": str(query_seconds)}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "deployments.worker", "--pool", pool, "--name", f"probe-{os.getpid()}"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


@contextmanager
def worker_behind_tap(stack, pool: str, tmp_path: Path, **tap_options) -> Iterator[tuple[PrefectTap, Path]]:
    """A probe worker (1 s poll) reaching Prefect through a `PrefectTap(**tap_options)`;
    yields the tap and the worker's log, stops both afterwards."""
    tap = PrefectTap(stack.stack.config.prefect_api_url.removesuffix("/api"), **tap_options).start()
    log = tmp_path / "probe-worker.log"
    worker = start_probe_worker(stack, pool, log, query_seconds=1, api_url=tap.url)
    try:
        yield tap, log
    finally:
        stop(worker)
        tap.stop()


def create_run(stack, deployment_id: str, runs: list[str]) -> tuple[str, float]:
    response = stack.prefect.post(
        f"/deployments/{deployment_id}/create_flow_run", json={"job_variables": {"command": "true"}}
    )
    response.raise_for_status()
    runs.append(response.json()["id"])
    return runs[-1], time.monotonic()


def picked_up(stack, run_id: str) -> bool:
    return stack.prefect.get(f"/flow_runs/{run_id}").json()["state_type"] != "SCHEDULED"


def log_says(log: Path, words: str) -> bool:
    return log.exists() and words in log.read_text(errors="replace")


def test_a_scheduled_run_is_picked_up_from_its_event_not_the_poll(stack, probe, tmp_path):
    pool, deployment_id, runs = probe
    log = tmp_path / "probe-worker.log"
    worker = start_probe_worker(stack, pool, log, query_seconds=600)  # polls at start, then in 10 minutes
    try:
        wait_until(lambda: log_says(log, "listening for scheduled runs"), 60, what=lambda: log.read_text()[-2000:])
        time.sleep(1)  # the scan the connection itself triggered is over
        for _ in range(2):
            run_id, created = create_run(stack, deployment_id, runs)
            wait_until(lambda run_id=run_id: picked_up(stack, run_id), 30, 0.1, what=f"pickup of {run_id}")
            assert time.monotonic() - created < 30  # the poll would have taken 10 minutes
            assert log_says(log, f"submitting flow run '{run_id}'")
    finally:
        stop(worker)


def test_runs_are_still_picked_up_by_polling_when_the_event_stream_is_down(stack, probe, tmp_path):
    pool, deployment_id, runs = probe
    with worker_behind_tap(stack, pool, tmp_path, refuse_events_out=True) as (tap, log):
        wait_until(lambda: log_says(log, "event stream unavailable"), 60, what=lambda: log.read_text()[-2000:])
        assert "polling continues" in log.read_text()
        run_id, _ = create_run(stack, deployment_id, runs)
        wait_until(lambda: picked_up(stack, run_id), 30, 0.2, what=f"pickup of {run_id} by polling")
        assert log_says(log, f"submitting flow run '{run_id}'")
        assert tap.refused >= 1 and not log_says(log, "listening for scheduled runs")


def test_a_run_starts_at_once_while_the_server_refuses_its_worker_labels(stack, probe, tmp_path):
    """Under SQLite write load the server answers the worker's label PATCH with 503, which
    Prefect's client retries for about a minute before the run is crashed: the run's process
    must not wait for it (deployments/worker.py, `_give_worker_labels_to_flow_run`)."""
    pool, deployment_id, runs = probe
    with worker_behind_tap(stack, pool, tmp_path, refuse_label_patches=True) as (tap, log):
        wait_until(lambda: log_says(log, "started!"), 60, what=lambda: log.read_text()[-2000:])
        run_id, created = create_run(stack, deployment_id, runs)
        name = stack.prefect.get(f"/flow_runs/{run_id}").json()["name"]
        wait_until(
            lambda: log_says(log, f"Flow run '{name}' submitted to infrastructure"), 20, 0.2,
            what=lambda: log.read_text()[-3000:],
        )
        assert time.monotonic() - created < 20  # waiting out the PATCH's retries takes about a minute
        assert tap.refused_label_patches >= 1
        assert stack.prefect.get(f"/flow_runs/{run_id}").json()["state_type"] != "CRASHED"
