"""The relay's warm hand-off: fallback to a cold start, signal forwarding, the exit code."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading

from deployments.runtime import relay
from deployments.runtime.protocol import recv_request


def test_relay_falls_back_to_cold_when_the_zygote_is_missing(tmp_path, capsys):
    before = signal.getsignal(signal.SIGTERM)
    assert relay.warm_start(str(tmp_path / "no-zygote.sock")) is None
    assert "warm start unavailable" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == before


class StandInZygote:
    """Listens at `path` like a zygote; `answer(conn, request)` plays the zygote's part."""

    def __init__(self, path: str, answer):
        self.request: dict = {}
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.thread = threading.Thread(target=self._serve, args=(answer,))

    def _serve(self, answer) -> None:
        conn, _ = self.listener.accept()
        request, fds = recv_request(conn)
        self.request.update(request)
        for fd in fds:
            os.close(fd)
        answer(conn)
        conn.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.thread.join(10)
        self.listener.close()


def test_relay_forwards_signals_and_exits_with_the_reported_code(tmp_path):
    """The stand-in zygote starts a `sleep` as the job's supervisor and reports its exit
    code; the worker's SIGTERM to the relay must reach that `sleep`."""
    status: list[int] = []

    def fork_and_report(conn: socket.socket) -> None:
        supervisor = subprocess.Popen(["sleep", "30"])
        conn.sendall(f"pid {supervisor.pid}\n".encode())
        os.kill(os.getpid(), signal.SIGTERM)  # the worker cancels: the relay's handler runs
        status.append(supervisor.wait(10))
        conn.sendall(f"exit {128 - status[0]}\n".encode())

    previous = signal.getsignal(signal.SIGTERM)
    try:
        with StandInZygote(str(tmp_path / "z.sock"), fork_and_report) as zygote:
            code = relay.warm_start(str(tmp_path / "z.sock"))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert status == [-signal.SIGTERM], "the relay passed the worker's SIGTERM on"
    assert code == 128 + signal.SIGTERM
    seen = zygote.request
    assert seen["cwd"] == os.getcwd() and seen["argv"] == sys.argv and seen["env"]["PATH"] == os.environ["PATH"]
    assert seen["relay_pid"] == os.getpid()


def test_the_relay_hands_the_zygote_a_scrubbed_environment_and_starts_cold_if_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-worker-secret")
    with StandInZygote(str(tmp_path / "z.sock"), lambda conn: conn.sendall(b"error RuntimeError\n")) as zygote:
        assert relay.warm_start(str(tmp_path / "z.sock")) is None
    assert "OPENAI_API_KEY" not in zygote.request["env"]
    assert zygote.request["env"]["PATH"] == os.environ["PATH"]
