"""One TLS context per process for the HTTP clients the service opens itself.

httpx builds a new `ssl.SSLContext` (certifi's CA bundle parsed: ~16 ms of CPU on the
2-core bench VM, bench/job_cpu.py) for every client and transport it makes, even one that
only speaks plain HTTP to 127.0.0.1, and one more per proxy it reads from the environment.
A job's processes open several (the supervisor's run reporter and Prefect proxy, the
engine's label/artifact client, the LM endpoint check), so they share this one, built on
first use with httpx's own defaults (`verify=True`: certifi's roots, or SSL_CERT_FILE /
SSL_CERT_DIR when set). An SSLContext may be shared by clients and threads.

How it fails: as httpx's default would, when first used (an unreadable CA file raises).
"""

from __future__ import annotations

import functools
import ssl


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """httpx's default verifying context, built once per process (pass it as `verify=`)."""
    import httpx

    return httpx.create_ssl_context()
