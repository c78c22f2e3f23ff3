"""Inside the sandbox: bridge loopback ports to the supervisor's proxies, then run the engine.

    python -m deployments.runtime.sandbox_entry      (bwrap's command; sandbox.py)

The sandbox's network namespace has only a loopback interface, and the supervisor's
job-scoped Prefect proxy and egress proxy are Unix sockets in /run/dspy. Prefect's client
and LiteLLM speak TCP, so this process listens on 127.0.0.1:4200 (PREFECT_API_URL) and
127.0.0.1:3128 (HTTP(S)_PROXY) inside the namespace and copies each connection to the
matching socket (unix_forward.py). The bridge is plumbing, not a boundary: user code may talk to the sockets
directly, and the proxies outside decide what is allowed.

Then it runs `prefect.engine` as `__main__` in this process, which executes the job's one flow
run (PREFECT__FLOW_RUN_ID) and exits with its code. A bridge that cannot listen exits with 1
before any job code runs; a proxy that is gone shows up as a refused connection in the job.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from deployments.runtime.sandbox import (
    EGRESS_PORT,
    EGRESS_SOCKET,
    PREFECT_PORT,
    PREFECT_SOCKET,
    SANDBOX_RUN_DIR,
)
from deployments.runtime.unix_forward import TcpToUnixForwarder


def start_bridges() -> bool:
    """Listen on the loopback ports for the proxies' sockets (kept for the life of the
    engine); False, after saying why on stderr, when a port cannot listen."""
    try:
        bridges = [TcpToUnixForwarder(Path(SANDBOX_RUN_DIR) / name, port=port) for port, name in
                   ((PREFECT_PORT, PREFECT_SOCKET), (EGRESS_PORT, EGRESS_SOCKET))]
        for bridge in bridges:
            bridge.start()
    except (OSError, RuntimeError) as exc:
        print(f"sandbox: cannot bridge to the job's proxies: {exc}", file=sys.stderr, flush=True)
        return False
    return True


def main() -> int:
    if not start_bridges():
        return 1
    from deployments.runtime import prefect_heartbeats
    from dspy_service.tls import share_prefect_tls_contexts

    share_prefect_tls_contexts()
    prefect_heartbeats.install()  # the engine exits at once after its final state
    sys.argv = ["prefect.engine"]
    try:
        runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
