"""A job's LM cache server on a real Unix socket and a real SQLite file: what it stores and
answers, that it serves only its own scope directory, its bounds, what it says to garbage,
and that it hands back stored bytes without ever unpickling them."""

from __future__ import annotations

import os
import pickle
import socket
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployments.runtime.lm_cache_server import LmCacheServer, store_path
from dspy_service.lm_cache_protocol import (
    ANSWER_HEAD,
    CONTAINS,
    ERROR,
    GET,
    HIT,
    MISS,
    PUT,
    STORED,
    read_exactly,
    request,
)

MAX_ENTRY = 64 * 1024


@pytest.fixture
def home() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="lmc-", dir="/tmp") as raw:  # short: AF_UNIX paths
        yield Path(raw)


def serve(home: Path, name: str, scope: str, **kwargs) -> LmCacheServer:
    (home / scope).mkdir(exist_ok=True)
    options = {"max_entry_bytes": MAX_ENTRY, "size_limit_bytes": 1 << 20, **kwargs}
    return LmCacheServer(home / f"{name}.sock", home / scope, **options).start()


def connect(server: LmCacheServer) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(5)
    conn.connect(str(server.socket_path))
    return conn


def ask(conn: socket.socket, op: bytes, key: bytes, value: bytes = b"") -> tuple[bytes, bytes]:
    conn.sendall(request(op, key, value))
    status, length = ANSWER_HEAD.unpack(read_exactly(conn, ANSWER_HEAD.size))
    return status, read_exactly(conn, length)


def closed(conn: socket.socket) -> bool:
    try:
        return conn.recv(1) == b""
    except OSError:
        return True


def test_put_get_contains_on_one_connection(home):
    server = serve(home, "a", "scope-a")
    try:
        conn = connect(server)
        assert ask(conn, GET, b"k1") == (MISS, b"")
        assert ask(conn, CONTAINS, b"k1") == (MISS, b"")
        assert ask(conn, PUT, b"k1", b"first") == (STORED, b"")
        assert ask(conn, GET, b"k1") == (HIT, b"first")
        assert ask(conn, CONTAINS, b"k1") == (HIT, b"")
        assert ask(conn, PUT, b"k1", b"second") == (STORED, b"")
        assert ask(conn, GET, b"k1") == (HIT, b"second")
        assert ask(conn, PUT, b"empty", b"") == (STORED, b"")
        assert ask(conn, GET, b"empty") == (HIT, b"")
    finally:
        server.close()
    assert not server.socket_path.exists()


def test_jobs_of_one_scope_share_entries_and_other_scopes_never_see_them(home):
    job_one, job_two = serve(home, "one", "scope-a"), serve(home, "two", "scope-a")
    other = serve(home, "other", "scope-b")
    try:
        assert ask(connect(job_one), PUT, b"key", b"answer for a") == (STORED, b"")
        assert ask(connect(job_two), GET, b"key") == (HIT, b"answer for a")
        assert ask(connect(other), GET, b"key") == (MISS, b"")
        assert ask(connect(other), PUT, b"key", b"answer for b") == (STORED, b"")
        assert ask(connect(job_two), GET, b"key") == (HIT, b"answer for a")
    finally:
        for server in (job_one, job_two, other):
            server.close()
    assert store_path(home / "scope-a").is_file() and store_path(home / "scope-b").is_file()
    # The store lives apart from DSPy's own disk cache files in the scope directory.
    assert store_path(home / "scope-a").parent.name == "socket-cache"


def test_a_stored_pickle_comes_back_as_the_same_bytes_and_never_runs(home):
    marker = home / "unpickled"

    class Trap:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    payload = pickle.dumps(Trap())
    server = serve(home, "a", "scope-a")
    try:
        conn = connect(server)
        assert ask(conn, PUT, b"trap", payload) == (STORED, b"")
        assert ask(conn, GET, b"trap") == (HIT, payload)
    finally:
        server.close()
    assert not marker.exists(), "the server unpickled a stored value"
    with sqlite3.connect(store_path(home / "scope-a")) as db:
        assert db.execute("SELECT value FROM entries WHERE key = ?", (b"trap",)).fetchone()[0] == payload


@pytest.mark.parametrize(
    "frame, reason",
    [
        (request(b"X", b"k"), "unknown operation"),
        (request(GET, b""), "key length 0"),
        (request(GET, b"k" * 513), "key length 513"),
        (request(GET, b"k", b"v"), "takes no value"),
        (request(PUT, b"k", b"v" * (MAX_ENTRY + 1)), "over the limit"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "outside 1..512"),
        (b"\x80\x04\x95" + bytes(20), "unknown operation"),
    ],
)
def test_a_malformed_request_is_answered_error_and_its_connection_closed(home, frame, reason):
    server = serve(home, "a", "scope-a")
    try:
        conn = connect(server)
        with_value = frame.startswith(PUT)
        conn.sendall(frame[:64] if with_value else frame)  # an oversized value is refused on its head
        status, length = ANSWER_HEAD.unpack(read_exactly(conn, ANSWER_HEAD.size))
        assert status == ERROR and reason in read_exactly(conn, length).decode()
        assert closed(conn)
        assert ask(connect(server), GET, b"k") == (MISS, b""), "the server goes on serving"
    finally:
        server.close()


def test_a_half_sent_request_or_a_dropped_connection_leaves_the_server_serving(home):
    server = serve(home, "a", "scope-a")
    try:
        conn = connect(server)
        conn.sendall(request(PUT, b"k", b"value")[:12])
        conn.close()
        connect(server).close()
        assert ask(connect(server), PUT, b"k", b"value") == (STORED, b"")
    finally:
        server.close()


def test_past_the_size_limit_the_oldest_entries_go(home):
    server = serve(home, "a", "scope-a", size_limit_bytes=10_000)
    try:
        conn = connect(server)
        for index in range(30):
            assert ask(conn, PUT, b"k%d" % index, bytes(1000)) == (STORED, b"")
        assert server.store.stored_bytes() <= 10_000
        assert ask(conn, GET, b"k0") == (MISS, b"")
        assert ask(conn, GET, b"k29") == (HIT, bytes(1000))
        for index in range(200):  # empty values count too (key + row)
            assert ask(conn, PUT, b"empty-%d" % index, b"") == (STORED, b"")
        assert server.store.stored_bytes() <= 10_000
    finally:
        server.close()
    with sqlite3.connect(store_path(home / "scope-a")) as db:
        assert db.execute("SELECT SUM(size) FROM entries").fetchone()[0] <= 10_000
        assert db.execute("SELECT COUNT(*) FROM entries").fetchone()[0] < 200


def test_connections_past_the_cap_are_answered_error(home):
    server = serve(home, "a", "scope-a", max_connections=1)
    try:
        held = connect(server)
        assert ask(held, GET, b"k") == (MISS, b"")
        refused = connect(server)  # answered at once, before it asks anything
        status, length = ANSWER_HEAD.unpack(read_exactly(refused, ANSWER_HEAD.size))
        assert status == ERROR and b"more than 1 connections" in read_exactly(refused, length)
        assert closed(refused)
        assert ask(held, GET, b"k") == (MISS, b"")
    finally:
        server.close()


def test_a_store_that_fails_is_answered_error_on_a_connection_that_stays(home):
    (home / "scope-a").mkdir()
    (home / "scope-a" / "socket-cache").write_text("not a directory")
    server = serve(home, "a", "scope-a")
    try:
        conn = connect(server)
        status, reason = ask(conn, GET, b"k")
        assert status == ERROR and b"the cache store failed" in reason
        assert ask(conn, PUT, b"k", b"v")[0] == ERROR
        os.unlink(home / "scope-a" / "socket-cache")
        assert ask(conn, PUT, b"k", b"v") == (STORED, b"")
    finally:
        server.close()
