"""The stack refuses to start on ports another process holds (it would answer our health checks),
and lets its jobs reach its own demo models."""

import socket

import pytest

from deployments.stack import Stack, StackConfig
from dspy_service.settings import ServiceSettings


def test_refuses_busy_ports(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        stack = Stack(StackConfig(settings=ServiceSettings(home=tmp_path), api_port=port, prefect_port=0))
        with pytest.raises(RuntimeError, match=f"port {port} for the API is already in use"):
            stack.check_ports_free()


def test_the_stack_allow_lists_its_own_demo_models_besides_the_operators_entries(tmp_path):
    """The local LM, and the port where `dspy-service demo --real-model` serves the real model."""
    settings = ServiceSettings(home=tmp_path, egress_allow="10.0.0.0/8, llm.internal:8000")
    with_lm = StackConfig(settings=settings, local_lm_port=8765).environment()
    assert with_lm["DSPY_SERVICE_EGRESS_ALLOW"] == "10.0.0.0/8,llm.internal:8000,127.0.0.1:8765,127.0.0.1:8766"
    without = StackConfig(settings=ServiceSettings(home=tmp_path), local_lm_port=None).environment()
    assert without["DSPY_SERVICE_EGRESS_ALLOW"] == ""


def test_warm_start_is_the_default_and_cold_start_turns_it_off(tmp_path, monkeypatch):
    """Each worker gets a zygote unless DSPY_SERVICE_WARM_START=false or --cold-start says otherwise."""
    from deployments.cli import build_parser

    monkeypatch.delenv("DSPY_SERVICE_WARM_START", raising=False)
    assert len(Stack(StackConfig(settings=ServiceSettings(home=tmp_path))).zygotes) == 1
    monkeypatch.setenv("DSPY_SERVICE_WARM_START", "false")
    assert Stack(StackConfig(settings=ServiceSettings(home=tmp_path))).zygotes == []
    assert len(Stack(StackConfig(settings=ServiceSettings(home=tmp_path), warm_start=True)).zygotes) == 1
    parser = build_parser()
    assert parser.parse_args(["up"]).warm_start is None  # the setting decides
    assert parser.parse_args(["up", "--cold-start"]).warm_start is False
    assert parser.parse_args(["worker", "--cold-start"]).warm_start is False
    assert parser.parse_args(["worker", "--warm-start"]).warm_start is True
    with pytest.raises(SystemExit):
        parser.parse_args(["up", "--warm-start", "--cold-start"])
