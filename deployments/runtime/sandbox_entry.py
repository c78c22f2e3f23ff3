"""Inside the sandbox: bridge loopback ports to the supervisor's proxies, then run the engine.

    python -m deployments.runtime.sandbox_entry      (bwrap's command; sandbox.py)

The sandbox's network namespace has only a loopback interface, and the supervisor's
job-scoped Prefect proxy and egress proxy are Unix sockets in /run/dspy. Prefect's client
and LiteLLM speak TCP, so this process listens on 127.0.0.1:4200 (PREFECT_API_URL) and
127.0.0.1:3128 (HTTP(S)_PROXY) inside the namespace and copies each connection to the
matching socket. The bridge is plumbing, not a boundary: user code may talk to the sockets
directly, and the proxies outside decide what is allowed.

Then it runs `prefect.engine` as `__main__` in this process, which executes the job's one flow
run (PREFECT__FLOW_RUN_ID) and exits with its code. A bridge that cannot listen exits with 1
before any job code runs; a proxy that is gone shows up as a refused connection in the job.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import socket
import sys
import threading

from deployments.runtime.sandbox import (
    EGRESS_PORT,
    EGRESS_SOCKET,
    PREFECT_PORT,
    PREFECT_SOCKET,
    SANDBOX_RUN_DIR,
)

CHUNK = 65536


def _pipe(source: socket.socket, target: socket.socket) -> None:
    """Copy until EOF, then pass the EOF on (half-close) so the other side sees it."""
    try:
        while data := source.recv(CHUNK):
            target.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)


def _serve(connection: socket.socket, socket_path: str) -> None:
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(socket_path)
    except OSError:
        connection.close()
        upstream.close()
        return
    back = threading.Thread(target=_pipe, args=(upstream, connection), daemon=True)
    back.start()
    _pipe(connection, upstream)
    back.join()
    connection.close()
    upstream.close()


class Bridge:
    """127.0.0.1:`port` -> the Unix socket `socket_path`, one pair of threads per connection."""

    def __init__(self, port: int, socket_path: str):
        self.socket_path = socket_path
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(128)
        threading.Thread(target=self._accept, name=f"bridge-{port}", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=_serve, args=(connection, self.socket_path), daemon=True).start()


def main() -> int:
    try:
        Bridge(PREFECT_PORT, os.path.join(SANDBOX_RUN_DIR, PREFECT_SOCKET))
        Bridge(EGRESS_PORT, os.path.join(SANDBOX_RUN_DIR, EGRESS_SOCKET))
    except OSError as exc:
        print(f"sandbox: cannot bridge to the job's proxies: {exc}", file=sys.stderr, flush=True)
        return 1
    sys.argv = ["prefect.engine"]
    try:
        runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
