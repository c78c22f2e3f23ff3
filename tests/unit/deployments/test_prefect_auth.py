"""The home's Prefect auth string: made once, private, sent by every process of the stack
but given to the server alone as the string to check."""

import base64
import stat

import pytest

from deployments.prefect_auth import (
    CLIENT_ENV,
    SERVER_ENV,
    auth_headers,
    client_environment,
    ensure_auth_string,
    read_auth_string,
)
from deployments.stack import Stack, StackConfig
from dspy_service.settings import ServiceSettings


def test_generated_once_random_and_private(tmp_path):
    path = tmp_path / "home" / "prefect-auth"
    first = ensure_auth_string(path)
    assert first.startswith("dspy:") and len(first) > 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_auth_string(path) == first  # kept across restarts
    assert ensure_auth_string(tmp_path / "other") != first


def test_an_empty_file_is_refused_with_its_path(tmp_path):
    path = tmp_path / "prefect-auth"
    path.write_text("\n")
    with pytest.raises(ValueError, match=str(path)):
        read_auth_string(path)


def test_header_is_prefects_basic_scheme():
    (value,) = auth_headers("dspy:secret").values()
    scheme, token = value.split()
    assert scheme == "Basic" and base64.b64decode(token).decode() == "dspy:secret"


def test_stack_server_checks_the_string_and_every_process_sends_it(tmp_path):
    stack = Stack(StackConfig(settings=ServiceSettings(home=tmp_path), prefect_port=4321))
    auth = (tmp_path / "prefect-auth").read_text().strip()
    assert stack.prefect_auth == auth
    assert stack.env[CLIENT_ENV] == auth
    assert SERVER_ENV not in stack.env  # only the server holds the string it checks
    assert stack.server.extra_env[SERVER_ENV] == auth
    origins = stack.server.extra_env["PREFECT_SERVER_CORS_ALLOWED_ORIGINS"].split(",")
    assert origins == ["http://127.0.0.1:4321", "http://localhost:4321"]
    assert stack.server.command[stack.server.command.index("--host") + 1] == "127.0.0.1"


def test_client_environment_defaults_to_the_home_and_keeps_what_is_set(tmp_path):
    settings = ServiceSettings(home=tmp_path)
    assert client_environment(settings, {}) == {"PREFECT_API_URL": "http://127.0.0.1:4200/api"}
    auth = ensure_auth_string(settings.prefect_auth_file)
    assert client_environment(settings, {})[CLIENT_ENV] == auth
    remote = {"PREFECT_API_URL": "http://prefect:4200/api", CLIENT_ENV: "dspy:other"}
    assert client_environment(settings, remote) == {}
