"""Warm start's pure parts, with real sockets, descriptors, signals and processes: the
relay <-> zygote protocol, the relay's fallback, the supervisor's "worker gone" check."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

from dspy_service.settings import ServiceSettings
from flows import job_process
from flows.job_supervisor import JobSupervisor
from flows.warm_protocol import LineReader, exit_code, recv_request, send_request, socket_path
from flows.zygote import Zygote


def test_request_and_descriptors_cross_the_socket():
    relay, zygote = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    read, write = os.pipe()
    try:
        big_env = {f"VAR_{i}": "x" * 100 for i in range(2000)}  # > one socket buffer
        send_thread = threading.Thread(target=send_request, args=(relay, {"env": big_env, "cwd": "/"}, [0, write, 2]))
        send_thread.start()
        request, fds = recv_request(zygote)
        send_thread.join()
        assert request == {"env": big_env, "cwd": "/"}
        assert len(fds) == 3
        os.write(fds[1], b"through the passed descriptor")
        assert os.read(read, 100) == b"through the passed descriptor"
        for fd in fds:
            os.close(fd)
    finally:
        for fd in (read, write):
            os.close(fd)
        relay.close()
        zygote.close()


def test_a_readiness_probe_is_not_a_request():
    probe, zygote = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.close()
    with pytest.raises(EOFError):
        recv_request(zygote)
    zygote.close()


def test_relay_falls_back_to_cold_when_the_zygote_is_missing(tmp_path, capsys):
    before = signal.getsignal(signal.SIGTERM)
    assert job_process.warm_start(str(tmp_path / "no-zygote.sock")) is None
    assert "warm start unavailable" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == before


def test_relay_forwards_signals_and_exits_with_the_reported_code(tmp_path):
    """A stand-in zygote: takes the request, 'forks' a sleep as the supervisor, SIGTERMs
    the relay (the worker cancelling), and reports the supervisor's exit code."""
    path = str(tmp_path / "z.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    seen: dict = {}

    def zygote() -> None:
        conn, _ = listener.accept()
        request, fds = recv_request(conn)
        seen.update(request)
        for fd in fds:
            os.close(fd)
        supervisor = subprocess.Popen(["sleep", "30"])
        conn.sendall(f"pid {supervisor.pid}\n".encode())
        os.kill(os.getpid(), signal.SIGTERM)  # the relay's handler forwards it
        status = supervisor.wait(10)
        conn.sendall(f"exit {128 - status}\n".encode())  # Popen: -15 for SIGTERM
        conn.close()

    thread = threading.Thread(target=zygote)
    previous = signal.getsignal(signal.SIGTERM)
    thread.start()
    try:
        assert job_process.warm_start(path) == 128 + signal.SIGTERM
    finally:
        thread.join(10)
        signal.signal(signal.SIGTERM, previous)
        listener.close()
    assert seen["cwd"] == os.getcwd() and seen["argv"] == sys.argv and seen["env"]["PATH"] == os.environ["PATH"]


def test_supervisor_sees_the_relay_go_as_eof():
    relay, held = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    supervisor = JobSupervisor(ServiceSettings(), {"DSPY_SERVICE_ZYGOTE_SOCKET": "/x", "PATH": "/bin"}, relay=held)
    assert "DSPY_SERVICE_ZYGOTE_SOCKET" not in supervisor.env
    assert not supervisor.worker_gone()
    relay.close()
    assert supervisor.worker_gone()
    held.close()


def test_zygote_replaces_a_stale_socket_and_refuses_a_live_one(tmp_path):
    path = str(tmp_path / "z.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # bound, never listening: what a killed zygote leaves behind
    stale.close()
    first = Zygote(path)
    first.listen()
    try:
        with pytest.raises(SystemExit, match="another zygote"):
            Zygote(path).check_free()
    finally:
        first.listener.close()


def test_protocol_helpers():
    assert exit_code(3 << 8) == 3 and exit_code(signal.SIGKILL) == 128 + signal.SIGKILL
    assert socket_path("/srv/home", "w1") == "/srv/home/zygote-w1.sock"
    long = socket_path("/" + "d" * 120, "w1")
    assert long.startswith("/tmp/dspy-service-zygote-") and len(long) < 100
    a, b = socket.socketpair()
    b.sendall(b"pid 12\nexit 0\n")
    reader = LineReader(a)
    reader.feed()
    assert reader.line() == "pid 12" and reader.line() == "exit 0" and reader.line() is None
    a.close()
    b.close()
