"""Serve the real small model over HTTP (OpenAI-compatible) until SIGTERM or SIGINT.

    python -m dspy_service.testing.real_lm --model PATH.gguf --port 8766 [--context 1024] [--threads 2]
                                          [--parent-pid PID]

llama.cpp's own server (through xllamacpp) answers `/v1/chat/completions`, `/v1/models`
and `/health` on 127.0.0.1. Started by `RealLMServer.start()` (server.py), which finds the
weights; the defaults here are the tests'. With `--parent-pid` it stops when that process
(more exactly, the thread that started it) ends, however it ends (Linux), so that a test run
or demo that dies leaves no model server behind.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import threading

from .server import MODEL_ALIAS, SEED


def server_params(model: str, port: int, context: int, threads: int) -> object:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = model
    params.model_alias = {MODEL_ALIAS}
    params.hostnames = ["127.0.0.1"]
    params.port = port
    params.n_ctx = context
    params.n_parallel = 1  # one slot with the whole context; requests queue
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.sampling.temp = 0.0  # greedy unless a request says otherwise: answers repeat
    params.sampling.seed = SEED
    params.cache_ram_mib = 256
    return params


PR_SET_PDEATHSIG = 1


def stop_with_parent(parent_pid: int) -> None:
    """SIGTERM this process when its parent ends (prctl); exit now if it already has."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:
        raise SystemExit(f"the parent process {parent_pid} is gone")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dspy_service.testing.real_lm", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", required=True, help="the GGUF file")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--context", type=int, default=1024, help="tokens of context (prompt + answer)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parent-pid", type=int, default=None, help="stop when this process ends")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if args.parent_pid:
        stop_with_parent(args.parent_pid)

    import xllamacpp

    server = xllamacpp.Server(server_params(args.model, args.port, args.context, args.threads))
    print(f"real model {MODEL_ALIAS} listening on {server.listening_address}/v1", flush=True)
    while not stop.wait(0.5):
        pass
    del server
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
