"""Warm slots: job supervisors forked by the zygote before their job, each with a warm sandbox.

With warm start and the sandbox on, the zygote (zygote.py) keeps `size` idle slots
(DSPY_SERVICE_WARM_SANDBOXES, default the worker's job slots). A slot is a fork of the
zygote that starts one warm sandbox (warm_sandbox.py: bubblewrap up, the engine's imports
done) and waits on its socket pair for a job. When a relay's job arrives, the zygote hands
it to an idle slot (the relay's stdio and connection travel as SCM_RIGHTS descriptors,
protocol.py) and forks a new slot in its place; the slot becomes that job's supervisor
(zygote.become_supervisor) and its sandbox runs the job. So the job pays neither the
supervisor's start nor the engine's imports, and no process ever runs a second job: a
slot, its sandbox and its engine end with their one job.

A zygote that starts first sweeps the empty staged result directories (`<results>/.warm-*`)
of this host's zygotes that are gone (`sweep_staged_results`, staged_results.py): a host
that died outright leaves them, which no slot of it retires.

How it fails: a slot whose sandbox cannot start (no bubblewrap, results in a storage
block) or dies while idle exits, and the zygote waits before it forks the next one
(`backoff`, doubling up to BACKOFF_MAX); meanwhile jobs get a cold-sandbox supervisor as
without slots. A slot that died between the zygote's pick and the hand-off is skipped.
Idle slots die with the zygote (PR_SET_PDEATHSIG); a slot that took a job runs it to its
end on its own, like any supervisor.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from deployments.runtime.limits import PR_SET_PDEATHSIG, prctl
from deployments.runtime.protocol import recv_request, send_request

BACKOFF_START = 2.0
BACKOFF_MAX = 120.0
# A slot's exit codes before it took a job.
SLOT_RETIRED = 0  # the zygote closed the socket pair (it stops)
SLOT_NO_SANDBOX = 3  # its warm sandbox could not start
SLOT_SANDBOX_DIED = 4  # its warm sandbox exited while waiting


@dataclass
class IdleSlot:
    pid: int
    sock: socket.socket  # the zygote's end of the slot's socket pair


class SlotPool:
    """The zygote's idle slots: forks them, hands one a job, notices the ones that died idle."""

    def __init__(self, size: int, fork_slot: Callable[[socket.socket], int], log: Callable[[str], None]):
        self.size = size
        self.fork_slot = fork_slot
        self.log = log
        self.idle: list[IdleSlot] = []
        self.backoff = 0.0
        self.next_fork = 0.0

    def fill(self) -> None:
        """Fork slots up to `size`, unless a recent idle death asks to wait."""
        while len(self.idle) < self.size and time.monotonic() >= self.next_fork:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                pid = self.fork_slot(theirs)
            finally:
                theirs.close()
            self.idle.append(IdleSlot(pid, ours))

    def hand(self, request: dict, fds: list[int]) -> int | None:
        """Give the job to an idle slot; its pid (now the job's supervisor), or None when
        no slot could take it."""
        while self.idle:
            slot = self.idle.pop(0)
            try:
                send_request(slot.sock, request, fds)
            except OSError as exc:  # died just now; the reaper will see it
                self.log(f"warm slot {slot.pid} could not take a job: {exc!r}")
                continue
            finally:
                slot.sock.close()
            self.backoff = 0.0
            return slot.pid
        return None

    def died_idle(self, pid: int, code: int) -> bool:
        """A child exited: if it was an idle slot, forget it and wait before the next fork."""
        for slot in self.idle:
            if slot.pid == pid:
                self.idle.remove(slot)
                slot.sock.close()
                self.backoff = min(BACKOFF_MAX, max(BACKOFF_START, self.backoff * 2))
                self.next_fork = time.monotonic() + self.backoff
                self.log(f"warm slot {pid} exited idle with {code}; next one in {self.backoff:g} s")
                return True
        return False

    def close(self) -> None:
        for slot in self.idle:
            slot.sock.close()  # EOF: the slot retires its sandbox and exits
        self.idle = []


def wait_for_job(sock: socket.socket, sandbox_alive: Callable[[], bool]) -> tuple[dict, list[int]] | None:
    """Block until the zygote hands a job (request, descriptors); None when the zygote
    closed the pair or the sandbox died."""
    while sandbox_alive():
        ready, _, _ = select.select([sock], [], [], 0.5)
        if ready:
            try:
                return recv_request(sock, max_fds=4)
            except EOFError:
                return None
    return None


def run_slot(sock: socket.socket, become_supervisor: Callable[..., int], log: Callable[[str], None]) -> int:
    """The slot's life, in the zygote's child: start a warm sandbox, wait, supervise one job."""
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # idle slots go with the zygote
    if os.getppid() == 1:
        return SLOT_RETIRED
    from deployments.runtime.warm_sandbox import WarmSandbox
    from dspy_service.settings import get_settings

    try:
        warm = WarmSandbox(get_settings(), os.environ)
    except Exception as exc:  # noqa: BLE001 - no warm sandbox here: the zygote's jobs start cold
        log(f"warm sandbox could not start: {type(exc).__name__}: {exc}")
        return SLOT_NO_SANDBOX
    signal.signal(signal.SIGTERM, lambda *_: (warm.retire(), os._exit(SLOT_RETIRED)))
    handed = wait_for_job(sock, warm.alive)
    if handed is None:
        died = not warm.alive()
        warm.retire()
        return SLOT_SANDBOX_DIED if died else SLOT_RETIRED
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    prctl(PR_SET_PDEATHSIG, 0)  # from here on a job's supervisor: it outlives a zygote restart
    request, fds = handed
    if len(fds) != 4:
        log(f"a job hand-off came with {len(fds)} descriptors, not 4")
        warm.retire()
        return SLOT_RETIRED
    relay = socket.socket(fileno=fds.pop())
    sock.close()
    sys.stdout.flush()
    return become_supervisor(relay, request, fds, warm)


def sweep_staged_results(log: Callable[[str], None]) -> None:
    """Before the first slot: remove the empty staged result directories that zygotes of this
    host which are gone left behind (a host that died outright; staged_results.py)."""
    from deployments.runtime.job_sandbox import results_root
    from deployments.runtime.staged_results import sweep

    try:
        results = results_root(os.environ)
    except Exception:  # noqa: BLE001 - results in a storage block: no slot stages anything there
        return
    for path in sweep(results):
        log(f"removed {path}, staged by a zygote that is gone")


def hand_off_fds(conn: socket.socket, fds: list[int]) -> list[int]:
    """What a slot needs of the relay's request: its stdin, stdout, stderr and connection."""
    return [*fds, conn.fileno()]
