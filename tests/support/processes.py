"""A job's processes as the tests and benchmarks find them, read through the one /proc
reader (deployments.runtime.procfs).

The engine's host pid is logged ("(process N on host)": by the flow, or for a sandboxed
engine by its supervisor); above it are bubblewrap (sandboxed) and the supervisor. The
relay (the worker's child, `python -m deployments.runtime.relay`) is the supervisor's
parent on a cold start; on a warm start (the default) the supervisor is the zygote's child
and the relay a separate process, found as the one relay whose environment names the run.
Lookups that do not succeed in time raise AssertionError.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from deployments.runtime import procfs
from tests.support.polling import wait_until

LOGGED_PID = re.compile(r"\(process (\d+) on ")
RELAY_MODULE = "deployments.runtime.relay"


@dataclass(frozen=True)
class JobProcesses:
    engine: int
    supervisor: int
    relay: int

    @classmethod
    def of_engine(cls, engine: int, run_id: str) -> JobProcesses:
        supervisor = procfs.parent_of(engine)
        # A sandboxed engine's parents are bubblewrap's init and bubblewrap itself.
        while supervisor is not None and procfs.read_comm(supervisor) == "bwrap":
            supervisor = procfs.parent_of(supervisor)
        assert supervisor is not None, f"the engine {engine} is gone"
        if RELAY_MODULE in (procfs.cmdline_of(supervisor) or ""):  # cold: a fork of the relay
            relay = procfs.parent_of(supervisor)
            assert relay is not None, f"the supervisor {supervisor} is gone"
        else:  # warm: the relay hands its job to the zygote and waits for its exit code
            relay = relay_of_run(run_id, exclude=supervisor)
        return cls(engine=engine, supervisor=supervisor, relay=relay)

    def job_session(self) -> list[int]:
        """The processes of the engine's session: a sandboxed engine's is led by bubblewrap,
        and holds it, the sandbox's init, the engine and what the user's code started."""
        stat = procfs.read_stat(self.engine)
        return procfs.session_members(stat.session) if stat is not None else []


def engine_pid(api: httpx.Client, job_id: str, timeout: float = 90, interval: float = 0.2) -> int:
    """The pid the job's engine logged, once it has."""

    def logged() -> int | None:
        for entry in api.get(f"/jobs/{job_id}/logs").json():
            match = LOGGED_PID.search(entry["message"])
            if match:
                return int(match.group(1))
        return None

    return wait_until(logged, timeout, interval, what=f"job {job_id} to log its process id")


def wait_until_gone(pids: Iterable[int], timeout: float) -> None:
    """Until every one of `pids` has exited (zombies count as exited)."""
    pids = list(pids)

    def alive() -> list[int]:
        return [pid for pid in pids if not procfs.process_gone(pid)]

    wait_until(lambda: not alive(), timeout, interval=0.02, what=lambda: f"processes {alive()} to exit")


def processes_of_runs(run_ids: set[str]) -> list[int]:
    """Live processes whose environment names one of these flow runs (PREFECT__FLOW_RUN_ID)."""
    wanted = {f"PREFECT__FLOW_RUN_ID={run_id}".encode() for run_id in run_ids}
    return [stat.pid for stat in procfs.live_processes() if wanted & set(procfs.environ_of(stat.pid) or ())]


def relay_of_run(run_id: str, exclude: int | None = None) -> int:
    """The live relay process (the worker's child) running this flow run."""
    relays = [
        pid for pid in processes_of_runs({run_id}) if pid != exclude and RELAY_MODULE in (procfs.cmdline_of(pid) or "")
    ]
    assert len(relays) == 1, f"expected one relay process of run {run_id}, found {relays}"
    return relays[0]
