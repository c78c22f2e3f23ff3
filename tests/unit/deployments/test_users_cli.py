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


def run_budget_command(monkeypatch, prefect, argv: list[str]) -> int:
    import argparse

    monkeypatch.setattr(users_cli, "with_client", lambda action: __import__("asyncio").run(action(prefect)))
    parser = argparse.ArgumentParser()
    users_cli.add_users_parser(parser.add_subparsers())
    args = parser.parse_args(["users", "budget", *argv])
    return args.func(args)


def test_users_budget_shows_sets_and_clears_a_users_default(home, monkeypatch, capsys):
    from dspy_service import users
    from dspy_service.budget import Budget
    from dspy_service.budget_defaults import default_budget
    from tests.support.memory_prefect import Prefect

    prefect = Prefect()
    prefect.variables[users.user_variable("alice")] = users.user_record("alice", False, "dss.alice.x")
    assert run_budget_command(monkeypatch, prefect, ["alice", "--max-lm-calls", "40", "--max-cost-usd", "2"]) == 0
    assert capsys.readouterr().out == "alice: default budget max_lm_calls 40, max_cost_usd 2\n"
    assert __import__("asyncio").run(default_budget(prefect, "alice")) == Budget(max_lm_calls=40, max_cost_usd=2)
    assert run_budget_command(monkeypatch, prefect, ["alice"]) == 0
    assert "max_lm_calls 40" in capsys.readouterr().out
    assert run_budget_command(monkeypatch, prefect, ["alice", "--max-tokens", "0"]) == 1
    assert capsys.readouterr().err.startswith("error: --max-tokens: Input should be greater than 0")
    assert run_budget_command(monkeypatch, prefect, ["bob", "--max-tokens", "10"]) == 1
    assert capsys.readouterr().err == "error: user 'bob' not found\n"
    assert run_budget_command(monkeypatch, prefect, ["alice", "--clear"]) == 0
    assert capsys.readouterr().out == "alice: no default budget\n"
