"""The program server's pure parts: secrets scrubbed from messages, saved LMs stripped from a
state, exit reasons, usage sums, the internal token, the serving settings' bounds."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from deployments.program_server.app import create_app
from deployments.program_server.child import exit_reason
from deployments.program_server.child_main import scrub, strip_lms
from deployments.program_server.usage import UsageTotals
from dspy_service.serving_settings import program_server_token
from dspy_service.settings import ServiceSettings


def test_messages_lose_the_handed_secrets_and_key_shaped_strings():
    message = "401 for key sk-abcdef1234567890 (header Bearer tok.en-123456, custom s3cr3t-value)"
    scrubbed = scrub(message, ["s3cr3t-value"])
    assert "sk-abcdef" not in scrubbed and "tok.en" not in scrubbed and "s3cr3t" not in scrubbed
    assert scrubbed.count("[secret]") == 3


def test_saved_lms_are_stripped_from_flat_and_composed_states():
    flat = {"signature": {}, "demos": [], "lm": {"model": "x", "api_key": "k"}}
    assert strip_lms(flat)["lm"] is None
    composed = {"predict": {"signature": {}, "lm": {"model": "x"}}, "other": 1}
    assert strip_lms(composed) == {"predict": {"signature": {}, "lm": None}, "other": 1}


def test_exit_reasons_read_as_a_user_needs_them():
    assert exit_reason(-9, sandboxed=False) == "killed by SIGKILL"
    assert exit_reason(137, sandboxed=True) == "killed by SIGKILL"  # bubblewrap's 128 + N
    assert exit_reason(3, sandboxed=True) == "exit code 3"
    assert exit_reason(None, sandboxed=False) == "gone"


def test_usage_is_summed_per_program_and_version():
    totals = UsageTotals()
    totals.record("alice", "p", 1, {"calls": 2, "prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}, 2, 0)
    totals.record("alice", "p", 2, {"calls": 1, "prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}, 1, 1)
    usage = totals.of("alice", "p")
    assert (usage["predictions"], usage["errors"], usage["usage"]["total_tokens"]) == (3, 1, 20)
    assert usage["versions"]["1"]["usage"]["calls"] == 2 and usage["versions"]["2"]["errors"] == 1
    assert totals.of("bob", "p")["predictions"] == 0  # per owner


def test_every_route_but_health_needs_the_internal_token(tmp_path):
    app = create_app(ServiceSettings(home=tmp_path), "the-token", {})
    client = TestClient(app)  # no lifespan: the token check answers first
    assert client.get("/health").status_code == 200
    assert client.get("/v1/programs").status_code == 401
    assert client.get("/v1/programs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/v1/predict", json={}).status_code == 401


def test_the_token_file_is_made_once_private_and_the_setting_wins(tmp_path):
    settings = ServiceSettings(home=tmp_path)
    token = program_server_token(settings, tmp_path)
    assert token == program_server_token(settings, tmp_path) and len(token) > 30
    assert (settings.program_server_token_file(tmp_path).stat().st_mode & 0o777) == 0o600
    assert program_server_token(ServiceSettings(home=tmp_path, program_server_token="given"), tmp_path) == "given"


def test_serving_settings_have_bounds():
    with pytest.raises(ValidationError):
        ServiceSettings(predict_max_batch=0)
    with pytest.raises(ValidationError):
        ServiceSettings(program_server_url="127.0.0.1:8790")  # no scheme: refused
    assert ServiceSettings(program_server_url="http://10.0.0.5:9000/").program_server_address == ("10.0.0.5", 9000)
