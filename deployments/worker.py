"""The job worker: Prefect's process worker with event-driven pickup and fewer API reads.

Started as `python -m deployments.worker --pool POOL [--name NAME] [--limit N]` (by
`deployments/stack.py`, `dspy-service worker` and docker-compose). Its `type` is
"process", so the work pool, its base job template and what a job runs
(`deployments/runtime/relay.py`) are exactly those of `prefect worker start --type process`;
prefetch, heartbeat, query interval and cancellation come from the same PREFECT_WORKER_*
settings.

What differs from the stock worker:
- pickup: the get-and-submit loop waits on a `PickupSignal` (deployments/pickup.py) with
  PREFECT_WORKER_QUERY_SECONDS as timeout. It is woken by a Scheduled event of the pool
  (`ScheduledRunListener`) and when a run's process exits (a slot is free). Polling stays
  the fallback: with the event stream down, pickup waits for the poll as before.
- one scan at a time (a single loop), plus a `SubmissionGate`: a run is never submitted
  again for a Scheduled state this worker already moved to Pending (a stale scan).
- reads: one deployment read per submission instead of two (the existence check's read
  is handed to the job configuration) and each flow read once per worker process.
- heartbeats: a REST heartbeat every interval beside the worker channel's, retried at once
  on a conflict: the server drops heartbeats under SQLite write load
  (deployments/worker_heartbeat.py).
- the worker labels of a run (`_give_worker_labels_to_flow_run`) are written in the
  background: the run's process no longer waits on that PATCH, nor fails with it.

Pinned to Prefect 3.9.1: this overrides private `BaseWorker` methods and reads private
attributes (`_submit_run`, `_submit_scheduled_flow_runs`, `_propose_pending_state`,
`_give_worker_labels_to_flow_run`, `_runs_task_group`,
`_sync_and_initialize`, `_emit_worker_started_event`, `_submit_run_and_capture_errors`,
`_work_pool`, `_work_pool_name`, `_submitting_flow_run_ids`). `tests/unit/deployments/test_worker.py` fails
if any of them disappears or changes signature; check this module on every Prefect
upgrade.

How it fails: an error of the event listener only costs the poll delay (logged once per
outage); a failed worker-label PATCH is a warning, the run goes on. Other submission
errors are Prefect's own handling (the run is crashed with the reason,
or left Scheduled for the next scan). If the loop itself keeps failing it raises after
Prefect's error threshold, as `prefect worker start` does, and the stack restarts it.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import warnings
from functools import partial
from typing import Any
from uuid import UUID

import anyio
from prefect.client.schemas.objects import FlowRun
from prefect.settings import (
    PREFECT_WORKER_HEARTBEAT_SECONDS,
    PREFECT_WORKER_PREFETCH_SECONDS,
    PREFECT_WORKER_QUERY_SECONDS,
)
from prefect.utilities.services import critical_service_loop, start_client_metrics_server, stop_client_metrics_server
from prefect.workers.process import ProcessWorker

from deployments.pickup import PickupSignal, ScheduledRunListener, SubmissionGate, prefect_subscriber
from deployments.worker_heartbeat import RestHeartbeat

PREFECT_VERSION = "3.9.1"


class SubmissionReads:
    """The deployment and flow reads of submissions, memoized on the worker's client.

    Prefect reads a run's deployment twice per submission (an existence check, then the
    job configuration) and its flow once. A deployment read is reused for `ttl` seconds
    (covering one submission and the runs submitted with it); a flow is read once per
    worker process: its name and labels, all a job configuration takes from it, do not
    change while its deployment exists. Errors (ObjectNotFound included) are not kept."""

    def __init__(self, client, ttl: float = 5.0, clock=time.monotonic) -> None:
        self._read_deployment = client.read_deployment
        self._read_flow = client.read_flow
        self._ttl = ttl
        self._clock = clock
        self._deployments: dict[Any, tuple[float, Any]] = {}
        self._flows: dict[Any, Any] = {}
        client.read_deployment = self.read_deployment
        client.read_flow = self.read_flow

    async def read_deployment(self, deployment_id):
        now = self._clock()
        kept = self._deployments.get(deployment_id)
        if kept is None or now - kept[0] > self._ttl:
            kept = (now, await self._read_deployment(deployment_id))
            self._deployments[deployment_id] = kept
        return kept[1]

    async def read_flow(self, flow_id):
        if flow_id not in self._flows:
            self._flows[flow_id] = await self._read_flow(flow_id)
        return self._flows[flow_id]


# Defining a second class of type "process" replaces ProcessWorker in Prefect's worker
# registry of this process (with a warning); that is the point: this is the process worker.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")

    class JobWorker(ProcessWorker):
        type = "process"

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.pickup = PickupSignal()
            self.gate = SubmissionGate()
            self.reads: SubmissionReads | None = None
            self._listener: ScheduledRunListener | None = None

        async def start(self, run_once: bool = False, with_healthcheck: bool = False, printer=print) -> None:
            """`BaseWorker.start` with the pickup loop in place of the fixed-interval poll."""
            if run_once or with_healthcheck:
                raise NotImplementedError("the job worker runs as a service only")
            try:
                async with self as worker:
                    sync_service = partial(
                        critical_service_loop, workload=self._sync_and_initialize,
                        interval=self.heartbeat_interval_seconds, jitter_range=0.3, backoff=4,
                    )
                    # The wait is inside the workload, so the loop itself does not sleep.
                    pickup_service = partial(
                        critical_service_loop, workload=self.wait_and_submit, interval=0, backoff=4
                    )
                    async with anyio.create_task_group() as loops:
                        loops.start_soon(pickup_service)
                        loops.start_soon(sync_service)
                        loops.start_soon(self.listen_for_scheduled_runs)
                        loops.start_soon(self.send_retried_heartbeats)
                        self._started_event = await self._emit_worker_started_event()
                        start_client_metrics_server()
                        printer(f"Worker {worker.name!r} started!")
            finally:
                stop_client_metrics_server()
            printer(f"Worker {self.name!r} stopped!")

        async def wait_and_submit(self) -> list[FlowRun]:
            """One turn of the pickup loop: wait for a wake or the poll interval, then scan."""
            await self.pickup.wait(PREFECT_WORKER_QUERY_SECONDS.value())
            return await self.get_and_submit_flow_runs()

        async def listen_for_scheduled_runs(self) -> None:
            """Once the pool is known (after the first sync), wake the loop on its Scheduled events."""
            while self._work_pool is None:
                await anyio.sleep(0.2)
            self._listener = ScheduledRunListener(prefect_subscriber(self._work_pool.id), self.pickup, self._logger)
            await self._listener.run()

        async def send_retried_heartbeats(self) -> None:
            """A REST heartbeat every interval beside the channel's (deployments/worker_heartbeat.py)."""
            await RestHeartbeat(
                partial(
                    self.client.send_worker_heartbeat, work_pool_name=self._work_pool_name, worker_name=self.name,
                    heartbeat_interval_seconds=self.heartbeat_interval_seconds,
                ),
                self.heartbeat_interval_seconds, self._logger,
            ).run()

        async def _submit_scheduled_flow_runs(self, flow_run_response: list) -> list[FlowRun]:
            fresh = [
                entry for entry in flow_run_response
                if not self.gate.already_taken(entry.flow_run.id, getattr(entry.flow_run.state, "id", None))
            ]
            if len(fresh) < len(flow_run_response):
                self._logger.debug("Skipped %d run(s) already submitted", len(flow_run_response) - len(fresh))
            return await super()._submit_scheduled_flow_runs(flow_run_response=fresh)

        async def _propose_pending_state(self, flow_run: FlowRun) -> bool:
            accepted = await super()._propose_pending_state(flow_run)
            if accepted:
                self.gate.taken(flow_run.id, getattr(flow_run.state, "id", None))
            return accepted

        async def setup(self) -> None:
            await super().setup()
            self.reads = SubmissionReads(self._client)

        async def _give_worker_labels_to_flow_run(self, flow_run_id: UUID) -> None:
            """Label the run with this worker in the background: its process starts without waiting.

            Prefect awaits this PATCH between the run's Pending and Submitting states. On SQLite
            the server reads the labels, then writes them, in one deferred transaction, which
            fails at once with 503 "database is locked" whenever another write commits in
            between (job engines write states, logs and labels all the time); the client retries
            it after 2, 4, 8, 16 and 32 s. Measured in bench/job_cpu.py (20 jobs at once): up
            to 4 such 503s in a row held a run Pending 31 s with no process; a sixth failure
            crashes the run ("Failed to submit flow run to infrastructure"); a run once left
            Pending, no process, until the stuck-Pending automation (2 min) fits the same wait.
            The labels only name the worker and pool in the UI: nothing waits on them, so a
            failure is a warning. The server merges labels by read-then-write, so this PATCH
            may now overlap the job's own label writes: on SQLite an overlapping pair fails
            (the 503 above) and is retried, none lost; on PostgreSQL it is one short
            transaction, done long before the job's first label write (~0.5 s later at least)."""
            if self._runs_task_group is None:
                await self._label_run(flow_run_id)
            else:
                self._runs_task_group.start_soon(self._label_run, flow_run_id)

        async def _label_run(self, flow_run_id: UUID) -> None:
            try:
                await super()._give_worker_labels_to_flow_run(flow_run_id)
            except Exception as exc:  # the run goes on; only its worker labels are missing
                self._logger.warning(
                    "Could not label flow run %s with this worker (%s: %s); the run is not affected",
                    flow_run_id, type(exc).__name__, exc,
                )

        async def _submit_run_and_capture_errors(self, flow_run: FlowRun, task_status=None):
            try:
                return await super()._submit_run_and_capture_errors(flow_run, task_status)
            finally:
                # The run's process is gone: a slot is free, look for the next run now.
                self.pickup.wake()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m deployments.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--pool", required=True, help="the work pool to take jobs from")
    parser.add_argument("--name", default=None, help="the worker's name (one name per process)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many runs at once (default: the pool's)")
    parser.add_argument("--prefetch-seconds", type=float, default=None, help="default: PREFECT_WORKER_PREFETCH_SECONDS")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """What `prefect worker start --pool POOL --type process` does, with the job worker."""
    import os

    from prefect.utilities.processutils import setup_signal_handlers_worker

    from dspy_service.tls import share_prefect_tls_contexts

    args = parse_args(argv)
    share_prefect_tls_contexts(prebuild=True)  # the worker's per-run clients share one context
    worker = JobWorker(
        work_pool_name=args.pool,
        name=args.name,
        limit=args.limit,
        prefetch_seconds=args.prefetch_seconds if args.prefetch_seconds is not None
        else PREFECT_WORKER_PREFETCH_SECONDS.value(),
        heartbeat_interval_seconds=int(PREFECT_WORKER_HEARTBEAT_SECONDS.value()),
    )
    # First SIGTERM/SIGINT: stop taking runs and let running ones finish (Prefect's handling).
    setup_signal_handlers_worker(os.getpid(), "the job worker", lambda *a, **_: print(*a, flush=True))
    try:
        asyncio.run(worker.start(printer=lambda *a, **_: print(*a, flush=True)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"Worker {worker.name!r} stopped!", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
