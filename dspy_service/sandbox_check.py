"""Whether this host can run job sandboxes (bubblewrap), for the worker, `up` and /health.

One fact lives here: the namespaces a job's sandbox unshares (`namespace_arguments`, used by
deployments/runtime/sandbox.py to build the real command). `bubblewrap_problem` starts a tiny
sandbox with those namespaces and says, when it cannot, what is wrong and how to fix it;
`sandbox_warning` is what `up`, the worker log and /health say when an operator turned the
sandbox off. Nothing here raises: every failure becomes the returned message.
"""

from __future__ import annotations

import functools
import shutil
import subprocess

BWRAP = "bwrap"
OFF_HINT = "or set DSPY_SERVICE_SANDBOX=off to run user code unsandboxed (not for untrusted users)"
SANDBOX_OFF_WARNING = (
    "DSPY_SERVICE_SANDBOX=off: jobs' signature and metric code runs unsandboxed, with the worker's "
    "view of the host and its Prefect credentials; do not let untrusted users submit jobs"
)


def namespace_arguments(uid: int) -> list[str]:
    """bubblewrap options: own user, pid, network, ipc, uts (and cgroup) namespaces; `uid`
    with no capabilities; dies with its parent."""
    return [
        "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
        "--unshare-cgroup-try", "--uid", str(uid), "--gid", str(uid), "--hostname", "dspy-job",
        "--cap-drop", "ALL", "--die-with-parent",
    ]


def bubblewrap_problem(uid: int = 65534, timeout: float = 20.0) -> str | None:
    """None when a sandbox can start on this host; else what is wrong and how to fix it."""
    if shutil.which(BWRAP) is None:
        return (
            "bubblewrap (bwrap) is not installed on this host: install it (Debian/Ubuntu: "
            f"`apt-get install bubblewrap`), {OFF_HINT}"
        )
    command = [BWRAP, *namespace_arguments(uid), "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "true"]
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap could not start a sandbox here ({exc}), {OFF_HINT}"
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines() or ["no message"]
        return (
            f"bubblewrap may not create a sandbox here ({lines[-1]}): allow user namespaces "
            "(sysctl kernel.unprivileged_userns_clone=1 and user.max_user_namespaces > 0; in a container, "
            f"a seccomp/AppArmor profile that permits them), {OFF_HINT}"
        )
    return None


@functools.cache
def cached_bubblewrap_problem(uid: int = 65534) -> str | None:
    """`bubblewrap_problem`, checked once per process (for /health)."""
    return bubblewrap_problem(uid)


def startup_check(mode: str, uid: int) -> tuple[str | None, str | None]:
    """(error, warning) for a worker or `up` about to start: an error when the sandbox is on
    but cannot start here (no job could run), a warning when an operator turned it off."""
    if mode == "off":
        return None, SANDBOX_OFF_WARNING
    problem = bubblewrap_problem(uid)
    return (f"jobs cannot be sandboxed on this host: {problem}" if problem else None), None
