"""The process's one TLS context: httpx's verifying default, built once and used by the
clients the service opens itself."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys

import httpx

from deployments.runtime.reporter import RunReporter
from dspy_service.prefect_http import prefect_transport_settings
from dspy_service.tls import default_ssl_context


def test_the_shared_context_verifies_certificates_and_host_names():
    context = default_ssl_context()
    assert context is default_ssl_context(), "built once per process"
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    expected = httpx.create_ssl_context()
    assert context.get_ca_certs() == expected.get_ca_certs(), "the same roots as httpx's own default"


def test_the_service_clients_use_it():
    assert prefect_transport_settings()["verify"] is default_ssl_context()
    reporter = RunReporter({"PREFECT_API_URL": "http://127.0.0.1:9/api"}, "run-1")
    try:
        assert reporter.client._transport._pool._ssl_context is default_ssl_context()
    finally:
        reporter.client.close()


# Prefect's client modules keep the shim for the rest of the process: checked in a fresh one.
PREFECT_CLIENTS_SHARE = """
import ssl, certifi
from prefect.settings import PREFECT_API_SSL_CERT_FILE
from dspy_service.tls import share_prefect_tls_contexts, verifying_context
share_prefect_tls_contexts(prebuild=True)
share_prefect_tls_contexts()  # a second call changes nothing
from prefect.client.orchestration import PrefectClient, SyncPrefectClient
clients = [SyncPrefectClient("http://127.0.0.1:9/api"), PrefectClient("http://127.0.0.1:9/api")]
contexts = [c._client._transport._pool._ssl_context for c in clients]
cafile = PREFECT_API_SSL_CERT_FILE.value() or certifi.where()  # what Prefect's clients ask for
assert contexts[0] is contexts[1] is verifying_context(cafile), "one context for every client, the one prebuilt"
assert contexts[0].verify_mode == ssl.CERT_REQUIRED and contexts[0].check_hostname, "still verifying"
assert verifying_context.cache_info().misses == 1, verifying_context.cache_info()
import prefect.client.orchestration as orchestration
unverified = orchestration.ssl.create_default_context()  # Prefect changes this one after building it
assert unverified is not orchestration.ssl.create_default_context(), "only CA-file contexts are shared"
assert orchestration.ssl.SSLContext is ssl.SSLContext, "the rest of ssl as it was"
print("ok")
"""


def test_prefect_clients_of_a_process_share_one_verifying_context():
    result = subprocess.run(
        [sys.executable, "-c", PREFECT_CLIENTS_SHARE], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"},
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
