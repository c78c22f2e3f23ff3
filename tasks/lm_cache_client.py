"""A sandboxed engine's LM cache: DSPy's in-memory cache over its job's cache server.

Inside the sandbox the tenant's cache directory is not mounted; the supervisor serves it on
a Unix socket (deployments/runtime/lm_cache_server.py; the socket's path is in
DSPY_SERVICE_LM_CACHE_SOCKET). `SocketDiskCache` stands where DSPy's `Cache` keeps its
disk layer (`dspy.clients.cache.Cache.disk_cache`, used as `key in`, `get`, `set`,
`delete`): it pickles a response here, in the sandbox, sends the bytes, and unpickles what
comes back here too. The server never unpickles.

Failures: none reaches the job. A lost or refused connection, a timeout
(`SOCKET_TIMEOUT_SECONDS`), an ERROR answer, a response that does not pickle or unpickle,
or one over `max_entry_bytes` is a miss (or a value not stored). After
`FAILURES_BEFORE_OFF` failures in a row the layer turns itself off for the rest of the job
(one warning in the job's log), so a dead server costs a job at most that many timeouts;
DSPy's in-memory cache goes on working.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import socket
import threading
from typing import Any

from dspy_service.lm_cache_protocol import (
    ANSWER_HEAD,
    CONTAINS,
    ERROR,
    GET,
    HIT,
    MAX_KEY_BYTES,
    PUT,
    STORED,
    read_exactly,
    request,
)

logger = logging.getLogger(__name__)

SOCKET_TIMEOUT_SECONDS = 5.0
FAILURES_BEFORE_OFF = 3


class CacheUnavailable(Exception):
    """The server did not answer as it should (the call is a miss)."""


class SocketDiskCache:
    """DSPy's disk-cache layer over the job's cache server; safe to use from many threads
    (a pool of connections, one per call in flight)."""

    def __init__(self, socket_path: str, *, max_entry_bytes: int, timeout: float = SOCKET_TIMEOUT_SECONDS):
        self.socket_path = socket_path
        self.max_entry_bytes = max_entry_bytes
        self.timeout = timeout
        self.off = False
        self._failures = 0
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()

    def __contains__(self, key: object) -> bool:
        encoded = self._key(key)
        return encoded is not None and self._call(CONTAINS, encoded) is not None

    def get(self, key: object, default: Any = None) -> Any:
        encoded = self._key(key)
        payload = None if encoded is None else self._call(GET, encoded)
        if payload is None:
            return default
        try:
            return pickle.loads(payload)  # noqa: S301 - in the sandbox: this tenant's own entry
        except Exception as exc:  # noqa: BLE001 - a broken entry is a miss
            logger.debug("LM cache: an entry that does not unpickle is a miss: %s", exc)
            return default

    def set(self, key: object, value: Any) -> bool:
        encoded = self._key(key)
        if encoded is None:
            return False
        try:
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - an unpicklable response is just not cached
            logger.debug("LM cache: a response that does not pickle is not cached: %s", exc)
            return False
        if len(data) > self.max_entry_bytes:
            return False
        return self._call(PUT, encoded, data) is not None

    def delete(self, key: object) -> bool:
        """DSPy deletes an entry its own deserializer refused; this layer never refuses one
        (an entry that does not unpickle is a miss), so there is nothing to delete."""
        return False

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(OSError):
                conn.close()

    def _key(self, key: object) -> bytes | None:
        encoded = str(key).encode()
        return encoded if 0 < len(encoded) <= MAX_KEY_BYTES else None

    def _call(self, op: bytes, key: bytes, value: bytes = b"") -> bytes | None:
        """The payload of a HIT or STORED answer; None for a miss, or when anything failed."""
        if self.off:
            return None
        try:
            status, payload = self._exchange(op, key, value)
        except (OSError, CacheUnavailable) as exc:
            self._failed(exc)
            return None
        self._failures = 0
        return payload if status in (HIT, STORED) else None

    def _exchange(self, op: bytes, key: bytes, value: bytes) -> tuple[bytes, bytes]:
        conn = self._connection()
        try:
            conn.sendall(request(op, key, value))
            status, length = ANSWER_HEAD.unpack(read_exactly(conn, ANSWER_HEAD.size))
            if length > self.max_entry_bytes:
                raise CacheUnavailable(f"an answer of {length} bytes is over the entry limit")
            payload = read_exactly(conn, length)
        except BaseException:
            conn.close()
            raise
        if status == ERROR:
            conn.close()  # the server may have closed its end; a fresh connection next time
            raise CacheUnavailable(payload.decode("utf-8", "replace"))
        with self._lock:
            self._idle.append(conn)
        return status, payload

    def _connection(self) -> socket.socket:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(self.timeout)
        try:
            conn.connect(self.socket_path)
        except OSError:
            conn.close()
            raise
        return conn

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        logger.debug("LM cache: %s", exc)
        if self._failures >= FAILURES_BEFORE_OFF and not self.off:
            self.off = True
            self.close()
            logger.warning("LM cache unavailable (%s); this job's LM calls go on without the shared cache", exc)
