"""`dspy-service demo --real-model` without the `real-lm` extra says which command installs it."""

from __future__ import annotations

import importlib.util

from deployments.cli import main
from dspy_service.testing.real_lm import INSTALL_COMMAND


def test_the_real_model_demo_without_the_extra_says_what_to_install(monkeypatch, capsys):
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "xllamacpp" else found(name, *a))
    assert main(["demo", "--real-model", "--url", "http://127.0.0.1:9"]) == 1
    error = capsys.readouterr().err
    assert error.strip() == f"error: the real model needs xllamacpp (the `real-lm` extra): {INSTALL_COMMAND}"
