"""Run the local test LM as a process (the offline demo and subprocess-based tests).

    python -m dspy_service.testing.local_lm --host 127.0.0.1 --port 8765 --delay-ms 0 [--port-file PATH]

``--port 0`` binds a free port; ``--port-file`` then tells a parent process which one
(written atomically after binding, so a reader never sees a partial number).
SIGTERM and SIGINT shut the server down cleanly.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import tempfile
import threading

from .server import LocalLMServer

logger = logging.getLogger("dspy_service.testing.local_lm")


def _write_port_file(path: str, port: int) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".port-", dir=directory)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{port}\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dspy_service.testing.local_lm", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="latency added to every answer")
    parser.add_argument("--port-file", help="write the bound port here once listening")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")

    stop = threading.Event()
    # The handlers only set a flag: shutting the server down from inside a signal
    # handler could deadlock against the thread that is serving.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    server = LocalLMServer(args.host, args.port, args.delay_ms).start()
    try:
        if args.port_file:
            _write_port_file(args.port_file, server.port)
        logger.info("local test LM listening on %s (delay %g ms)", server.url, args.delay_ms)
        while not stop.wait(0.5):
            pass
    finally:
        server.close()
        logger.info("local test LM stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
