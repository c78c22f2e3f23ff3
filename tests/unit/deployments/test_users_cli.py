"""Which token client commands send, and where the users commands find Prefect."""

from __future__ import annotations

import pytest

from deployments import users_cli
from dspy_service.settings import ServiceSettings


@pytest.fixture
def home(tmp_path, monkeypatch):
    settings = ServiceSettings(home=tmp_path)
    monkeypatch.setattr(users_cli, "get_settings", lambda: settings)
    for name in ("DSPY_SERVICE_TOKEN", "PREFECT_API_URL", "PREFECT_API_AUTH_STRING"):
        monkeypatch.setenv(name, "-")  # recorded, so what the commands set is undone after the test
        monkeypatch.delenv(name)
    return settings


def test_the_token_is_given_else_the_environment_else_the_admin_file(home, monkeypatch):
    assert users_cli.api_token() is None
    home.admin_token_file.write_text("dss.admin.fromfile\n")
    assert users_cli.api_token() == "dss.admin.fromfile"
    monkeypatch.setenv("DSPY_SERVICE_TOKEN", "dss.bob.fromenv")
    assert users_cli.api_token() == "dss.bob.fromenv"
    assert users_cli.api_token("dss.carol.given") == "dss.carol.given"


def test_prefect_defaults_to_the_local_server_with_its_auth_file(home, monkeypatch):
    import os

    home.prefect_auth_file.write_text("admin:secret\n")
    users_cli.prefect_environment()
    assert os.environ["PREFECT_API_URL"] == users_cli.LOCAL_PREFECT_API
    assert os.environ["PREFECT_API_AUTH_STRING"] == "admin:secret"


def test_a_given_prefect_api_url_is_kept(home, monkeypatch):
    import os

    monkeypatch.setenv("PREFECT_API_URL", "http://elsewhere:4200/api")
    home.prefect_auth_file.write_text("admin:secret\n")
    users_cli.prefect_environment()
    assert os.environ["PREFECT_API_URL"] == "http://elsewhere:4200/api"
    assert "PREFECT_API_AUTH_STRING" not in os.environ
