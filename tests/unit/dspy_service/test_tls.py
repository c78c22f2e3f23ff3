"""The process's one TLS context: httpx's verifying default, built once and used by the
clients the service opens itself."""

from __future__ import annotations

import ssl

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
