"""The wire format between a sandboxed engine and its job's LM cache server (stdlib only).

The server (deployments/runtime/lm_cache_server.py) runs on the trusted side, the client
(tasks/lm_cache_client.py) inside the sandbox; both frame messages with this module. One
connection carries any number of request/answer pairs, one at a time:

    request:  op (1 byte) | key length (uint32) | value length (uint32) | key | value
    answer:   status (1 byte) | payload length (uint32) | payload

Ops: GET (value length 0; answer HIT with the stored bytes, or MISS), PUT (answer STORED),
CONTAINS (value length 0; answer HIT with no payload, or MISS). ERROR carries a short UTF-8
reason: for a malformed request (the server then closes the connection: what follows the
head cannot be trusted to be framed) or a store that failed (the connection stays).
Values are opaque bytes to the server: what the engine stores there is its own pickle,
and only the engine unpickles it.

Failures: `read_exactly` raises ConnectionError when the peer closes mid-frame;
`parse_request_head` raises ProtocolError for an unknown op or a length out of bounds
(key, or value over the server's limit).
"""

from __future__ import annotations

import socket
import struct

# The socket's name in the job's run directory (mounted at /run/dspy in the sandbox), and
# the variable that tells a sandboxed engine where it is.
LM_CACHE_SOCKET = "lm-cache.sock"
LM_CACHE_SOCKET_ENV = "DSPY_SERVICE_LM_CACHE_SOCKET"

GET, PUT, CONTAINS = b"G", b"P", b"C"
HIT, MISS, STORED, ERROR = b"H", b"M", b"S", b"E"
OPS = (GET, PUT, CONTAINS)

REQUEST_HEAD = struct.Struct("!cII")
ANSWER_HEAD = struct.Struct("!cI")
# DSPy's keys are sha256 hex digests (64 characters); anything far longer is not one.
MAX_KEY_BYTES = 512
MAX_REASON_BYTES = 300


class ProtocolError(ValueError):
    """A request the server does not serve; the reason goes back to the client."""


def request(op: bytes, key: bytes, value: bytes = b"") -> bytes:
    return REQUEST_HEAD.pack(op, len(key), len(value)) + key + value


def answer(status: bytes, payload: bytes = b"") -> bytes:
    return ANSWER_HEAD.pack(status, len(payload)) + payload


def error_answer(reason: str) -> bytes:
    return answer(ERROR, reason.encode("utf-8", "replace")[:MAX_REASON_BYTES])


def parse_request_head(head: bytes, max_value_bytes: int) -> tuple[bytes, int, int]:
    """(op, key length, value length) of a request head, checked against the bounds."""
    op, key_length, value_length = REQUEST_HEAD.unpack(head)
    if op not in OPS:
        raise ProtocolError(f"unknown operation {op!r}")
    if not 0 < key_length <= MAX_KEY_BYTES:
        raise ProtocolError(f"key length {key_length} is outside 1..{MAX_KEY_BYTES} bytes")
    if op != PUT and value_length:
        raise ProtocolError(f"operation {op.decode()} takes no value")
    if value_length > max_value_bytes:
        raise ProtocolError(f"value of {value_length} bytes is over the limit of {max_value_bytes}")
    return op, key_length, value_length


def read_exactly(sock: socket.socket, size: int) -> bytes:
    """`size` bytes from a blocking socket; ConnectionError if it closes first."""
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("the LM cache server closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
