"""One TLS context per process for the HTTP clients the service's processes open.

httpx builds a new `ssl.SSLContext` (certifi's CA bundle parsed: ~16-20 ms of CPU on the
2-core bench VM, bench/job_cpu.py) for every client and transport it makes, even one that
only speaks plain HTTP to 127.0.0.1, and one more per proxy it reads from the environment.
Prefect's clients do the same (`ssl.create_default_context(cafile=...)` per client): a job's
engine opens about ten (its run, flow, task, log, event and observer clients), the worker
one per run. So:

- `default_ssl_context()`: the context our own clients share, httpx's defaults
  (`verify=True`: certifi's roots, or SSL_CERT_FILE / SSL_CERT_DIR when set);
- `share_prefect_tls_contexts()`: Prefect's client modules get a verifying context per CA
  file once per process (`verifying_context`) instead of one per client. Their other uses
  of `ssl` (the insecure-skip-verify context, which they change after building it) are
  untouched.

An SSLContext may be shared by clients and threads. What a client changes on it is its
ALPN list (httpcore sets it per connection from the client's HTTP/2 choice), which is the
same for all of Prefect's clients of a process (one PREFECT_API_ENABLE_HTTP2 setting). A CA
file changed on disk while a process runs is not re-read by it.

How it fails: as the unshared contexts would, when first built (an unreadable CA file raises).
"""

from __future__ import annotations

import functools
import importlib
import os
import ssl
from typing import Any

# Prefect 3.9.1's modules that build a verifying context per client or connection.
PREFECT_TLS_MODULES = (
    "prefect.client.orchestration",
    "prefect._internal.version_checking",
    "prefect._internal.websockets",
)


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """httpx's default verifying context, built once per process (pass it as `verify=`)."""
    import httpx

    return httpx.create_ssl_context()


@functools.cache
def verifying_context(cafile: str) -> ssl.SSLContext:
    """`ssl.create_default_context(cafile=cafile)`, built once per process and file."""
    return ssl.create_default_context(cafile=cafile)


class SharedVerifyingContexts:
    """The `ssl` module as Prefect's client modules see it once shared: the same, except that a
    verifying context for a CA file (and nothing else) comes from `verifying_context`."""

    def __getattr__(self, name: str) -> Any:
        return getattr(ssl, name)

    @staticmethod
    def create_default_context(
        purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH, *, cafile=None, capath=None, cadata=None
    ) -> ssl.SSLContext:
        if purpose is ssl.Purpose.SERVER_AUTH and cafile is not None and capath is None and cadata is None:
            return verifying_context(os.fspath(cafile))
        return ssl.create_default_context(purpose, cafile=cafile, capath=capath, cadata=cadata)


def share_prefect_tls_contexts(prebuild: bool = False) -> None:
    """Once per process, before Prefect's clients are made. With `prebuild`, also build the
    context Prefect's clients of this process's settings will ask for (a pre-imported
    process pays it before its job, not on the job's path)."""
    shared = SharedVerifyingContexts()
    for name in PREFECT_TLS_MODULES:
        module = importlib.import_module(name)
        if getattr(module, "ssl", None) is ssl:
            module.ssl = shared  # type: ignore[attr-defined]
    if prebuild:
        import certifi
        from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_TLS_INSECURE_SKIP_VERIFY

        if not PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value():
            verifying_context(os.fspath(PREFECT_API_SSL_CERT_FILE.value() or certifi.where()))
