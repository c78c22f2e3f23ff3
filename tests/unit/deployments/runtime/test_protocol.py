"""The relay <-> zygote protocol of warm start, over real sockets and descriptors."""

from __future__ import annotations

import os
import signal
import socket
import threading

import pytest

from deployments.runtime import procfs
from deployments.runtime.protocol import LineReader, exit_code, recv_request, send_request, socket_path


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


def test_a_request_without_its_descriptors_is_refused_and_leaks_none():
    relay, zygote = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    read, write = os.pipe()
    before = procfs.open_fds()
    try:
        send_request(relay, {"env": {}}, [write])  # one descriptor instead of three
        with pytest.raises(ValueError, match="malformed"):
            recv_request(zygote)
        assert procfs.open_fds() == before
    finally:
        for fd in (read, write):
            os.close(fd)
        relay.close()
        zygote.close()


def test_exit_codes_read_like_a_shell_reports_them():
    assert exit_code(3 << 8) == 3
    assert exit_code(signal.SIGKILL) == 128 + signal.SIGKILL


def test_the_socket_path_is_under_home_unless_too_long_for_a_unix_socket():
    assert socket_path("/srv/home", "w1") == "/srv/home/zygote-w1.sock"
    long = socket_path("/" + "d" * 120, "w1")
    assert long.startswith("/tmp/dspy-service-zygote-") and len(long) < 100
    assert socket_path("/" + "d" * 120, "w1") == long  # stable: the worker's jobs find it again


def test_lines_are_read_whole_and_in_order():
    a, b = socket.socketpair()
    try:
        b.sendall(b"pid 12\nexit ")
        reader = LineReader(a)
        reader.feed()
        assert reader.line() == "pid 12" and reader.line() is None
        b.sendall(b"0\n")
        reader.feed()
        assert reader.line() == "exit 0" and not reader.eof
        b.close()
        reader.feed()
        assert reader.eof
    finally:
        a.close()
