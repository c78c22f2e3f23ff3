"""The sandbox's TCP -> Unix socket bridge (unix_forward.py) on real sockets, and the proxy environment."""

from __future__ import annotations

import socket
import tempfile
import threading
from pathlib import Path

from deployments.runtime.forwarder import proxy_environment
from deployments.runtime.unix_forward import TcpToUnixForwarder


def unix_server(path: Path, handle) -> socket.socket:
    """A Unix socket server answering each connection with `handle(conn)` in a thread."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return server


def read_all_then_answer(conn: socket.socket) -> None:
    """Reads to EOF (the client's half-close), then answers with what it got, reversed."""
    with conn:
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
        conn.sendall(received[::-1])


def test_bytes_and_half_closes_pass_both_ways():
    path = Path(tempfile.mkdtemp(prefix="fwd-", dir="/tmp")) / "target.sock"
    server = unix_server(path, read_all_then_answer)
    forwarder = TcpToUnixForwarder(path)
    forwarder.start()
    try:
        payload = bytes(range(256)) * 2000  # 512 KB, more than one chunk
        with socket.create_connection(("127.0.0.1", forwarder.port), timeout=10) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer == payload[::-1]
    finally:
        forwarder.close()
        server.close()


def test_a_missing_socket_closes_the_connection_at_once_and_close_stops_listening():
    forwarder = TcpToUnixForwarder("/tmp/no-such-dir-for-the-forwarder/x.sock")
    forwarder.start()
    with socket.create_connection(("127.0.0.1", forwarder.port), timeout=5) as sock:
        assert sock.recv(10) == b""
    forwarder.close()
    refused = socket.socket()
    assert refused.connect_ex(("127.0.0.1", forwarder.port)) != 0
    refused.close()


def test_the_proxy_environment_names_every_variable_in_both_cases():
    env = proxy_environment("http://127.0.0.1:3128", "127.0.0.1:4200,http://127.0.0.1:4200")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        assert env[name] == env[name.lower()] == "http://127.0.0.1:3128"
    assert env["NO_PROXY"] == env["no_proxy"] == "127.0.0.1:4200,http://127.0.0.1:4200"
    assert len(env) == 8
