"""A sandboxed job's LM response cache, served by its supervisor on a Unix socket.

The engine inside the sandbox does not mount its tenant's cache directory: it reaches the
cache through `lm-cache.sock` in the job's run directory (/run/dspy inside; the client is
tasks/lm_cache_client.py, the wire format dspy_service/lm_cache_protocol.py). One server
per job, bound to the one tenant scope directory the supervisor computed from the job's
resolved secrets (dspy_service/lm_cache.py): a job can read and write only its own scope,
whatever keys it sends.

`OpaqueStore` keeps key -> bytes in SQLite (WAL, busy timeout) at
`<scope>/socket-cache/entries.sqlite3`, apart from the files of DSPy's own disk cache (the
unsandboxed engine's FanoutCache in the same scope directory): one never reads the other's
entries. Values are opaque: they are pickles the tenant's engine made, and nothing here
unpickles or otherwise interprets them. Jobs of the same scope, on this host or another
sharing the directory, use the same file (SQLite's locking; like DSPy's own disk cache,
which is SQLite too, it needs a file system with working locks). A value over
`max_entry_bytes` is refused; when the stored bytes (keys, values and a per-row overhead)
pass `size_limit_bytes`, the oldest stored entries are deleted down to 90% of it (first in,
first out: a read changes nothing on disk). The file does not shrink: SQLite reuses the
freed pages.

Failures: a malformed request (unknown op, a key over 512 bytes, a value over the limit)
is answered ERROR and its connection closed; a store error (locked past the busy timeout,
disk full, a broken file) is answered ERROR on a connection that stays open; more than
`max_connections` at once are answered ERROR and closed. The engine takes every ERROR or
lost connection as a miss: a cache problem never fails a job. `start()` raises OSError when
the socket cannot be bound; `close()` never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from deployments.runtime.forwarder import LoopThread, close_writer
from dspy_service.lm_cache_protocol import (
    CONTAINS,
    GET,
    HIT,
    MISS,
    REQUEST_HEAD,
    STORED,
    ProtocolError,
    answer,
    error_answer,
    parse_request_head,
)

STORE_DIR = "socket-cache"
STORE_FILE = "entries.sqlite3"
BUSY_TIMEOUT_MS = 5000
MAX_CONNECTIONS = 512  # a batch job's threads (max_batch_threads <= 256) each hold one
FRAME_TIMEOUT_SECONDS = 30.0  # for the rest of a request once its head arrived
EVICT_TO = 0.9
ROW_OVERHEAD_BYTES = 64  # about what SQLite spends per row and index entry besides key and value
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS entries (key BLOB PRIMARY KEY, value BLOB NOT NULL, "
    "size INTEGER NOT NULL, stored_at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS entries_by_age ON entries (stored_at)",
    "CREATE TABLE IF NOT EXISTS totals (id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO totals (id, bytes) VALUES (0, 0)",
)


def entry_size(key: bytes, value: bytes) -> int:
    """What an entry counts against the size limit: a flood of empty values still fills it."""
    return len(key) + len(value) + ROW_OVERHEAD_BYTES


def store_path(scope_dir: Path) -> Path:
    return scope_dir / STORE_DIR / STORE_FILE


class OpaqueStore:
    """key -> bytes in one SQLite file; not thread-safe (the server uses it from one thread)."""

    def __init__(self, path: Path, size_limit_bytes: int):
        self.path = path
        self.size_limit_bytes = size_limit_bytes
        self._db: sqlite3.Connection | None = None

    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                 check_same_thread=False)
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            for statement in SCHEMA:
                db.execute(statement)
            self._db = db
        return self._db

    def get(self, key: bytes) -> bytes | None:
        row = self.db().execute("SELECT value FROM entries WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def contains(self, key: bytes) -> bool:
        return self.db().execute("SELECT 1 FROM entries WHERE key = ?", (key,)).fetchone() is not None

    def put(self, key: bytes, value: bytes) -> None:
        db = self.db()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT size FROM entries WHERE key = ?", (key,)).fetchone()
            size = entry_size(key, value)
            db.execute("INSERT OR REPLACE INTO entries (key, value, size, stored_at) VALUES (?, ?, ?, ?)",
                       (key, value, size, time.time()))
            db.execute("UPDATE totals SET bytes = bytes + ? WHERE id = 0", (size - (row[0] if row else 0),))
            self._evict(db)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    def _evict(self, db: sqlite3.Connection) -> None:
        (total,) = db.execute("SELECT bytes FROM totals WHERE id = 0").fetchone()
        if total <= self.size_limit_bytes:
            return
        target = int(self.size_limit_bytes * EVICT_TO)
        while total > target:
            oldest = db.execute("SELECT key, size FROM entries ORDER BY stored_at LIMIT 256").fetchall()
            if not oldest:
                break
            for key, size in oldest:
                db.execute("DELETE FROM entries WHERE key = ?", (key,))
                total -= size
                if total <= target:
                    break
        db.execute("UPDATE totals SET bytes = ? WHERE id = 0", (max(total, 0),))

    def stored_bytes(self) -> int:
        return int(self.db().execute("SELECT bytes FROM totals WHERE id = 0").fetchone()[0])

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None


class LmCacheServer:
    """One job's cache server: `start()` listens on `socket_path`, `close()` stops it."""

    def __init__(
        self,
        socket_path: Path,
        scope_dir: Path,
        *,
        max_entry_bytes: int,
        size_limit_bytes: int,
        max_connections: int = MAX_CONNECTIONS,
        socket_mode: int = 0o666,
    ):
        self.socket_path = Path(socket_path)
        self.store = OpaqueStore(store_path(scope_dir), size_limit_bytes)
        self.max_entry_bytes = max_entry_bytes
        self.max_connections, self.socket_mode = max_connections, socket_mode
        self.active = 0
        self._tasks: set[asyncio.Task] = set()  # a connection's task, kept from garbage collection
        self._db_thread = ThreadPoolExecutor(1, thread_name_prefix=f"lm-cache-db-{self.socket_path.name}")
        self._thread = LoopThread(f"lm-cache-{self.socket_path.name}", self._serve)

    def start(self) -> LmCacheServer:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._thread.start()
        return self

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._thread.close()
        with contextlib.suppress(Exception):
            self._db_thread.submit(self.store.close)
            self._db_thread.shutdown(wait=True)
        with contextlib.suppress(OSError):
            self.socket_path.unlink()

    async def _serve(self) -> asyncio.AbstractServer:
        server = await asyncio.start_unix_server(self._handle, path=str(self.socket_path))
        os.chmod(self.socket_path, self.socket_mode)
        return server

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.active >= self.max_connections:
            writer.write(error_answer(f"more than {self.max_connections} connections at once"))
            await close_writer(writer)
            return
        self.active += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while await self._serve_one(reader, writer):
                pass
        except (TimeoutError, ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:  # close(): drop the connection quietly
            pass
        finally:
            self.active -= 1
            if task is not None:
                self._tasks.discard(task)
            with contextlib.suppress(asyncio.CancelledError):
                await close_writer(writer)

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection is over (EOF or a malformed request)."""
        try:
            head = await reader.readexactly(REQUEST_HEAD.size)
        except asyncio.IncompleteReadError:
            return False  # the client is done (or sent a stub of a head)
        try:
            op, key_length, value_length = parse_request_head(head, self.max_entry_bytes)
        except ProtocolError as problem:
            writer.write(error_answer(str(problem)))
            await writer.drain()
            return False
        body = await asyncio.wait_for(reader.readexactly(key_length + value_length), FRAME_TIMEOUT_SECONDS)
        key, value = body[:key_length], body[key_length:]
        loop = asyncio.get_running_loop()
        try:
            reply = await loop.run_in_executor(self._db_thread, self._answer, op, key, value)
        except (sqlite3.Error, OSError) as exc:
            reply = error_answer(f"the cache store failed: {type(exc).__name__}: {exc}")
        writer.write(reply)
        await writer.drain()
        return True

    def _answer(self, op: bytes, key: bytes, value: bytes) -> bytes:
        if op == GET:
            stored = self.store.get(key)
            return answer(MISS) if stored is None else answer(HIT, stored)
        if op == CONTAINS:
            return answer(HIT if self.store.contains(key) else MISS)
        self.store.put(key, value)
        return answer(STORED)

