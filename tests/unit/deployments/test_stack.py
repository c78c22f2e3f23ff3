"""The stack refuses to start on ports another process holds (it would answer our health checks)."""

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
