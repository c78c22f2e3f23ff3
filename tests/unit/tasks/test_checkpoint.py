"""A compiled program is kept in the job's result storage before evaluation, as JSON the API
reads back (api/kept_programs.py), secrets refused, and never at the cost of the job."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import dspy
import pytest
from prefect.filesystems import LocalFileSystem, RemoteFileSystem

from api.kept_programs import read_kept_program
from dspy_service import result_files
from dspy_service.contract import kept_program_key
from tasks import checkpoint
from tests.support.result_storage import use_local_result_storage

SECRET = "sk-unit-secret-1234567890"


def compiled_program(demo_answer: str = "4") -> dspy.Module:
    program = dspy.Predict("question -> answer")
    program.demos = [dspy.Example(question="2+2?", answer=demo_answer).with_inputs("question")]
    program.lm = dspy.LM("openai/local-model", api_key=SECRET)
    return program


class Usage:
    """Stands in for the job's LM meter: the calls counted so far."""

    def __init__(self):
        self.calls = 3

    def result_of(self, artifact, details):
        return {
            "program_artifact": artifact.model_dump(mode="json"),
            "details": {"usage": {"total": {"calls": self.calls}}, **details},
        }


@pytest.fixture(autouse=True)
def fresh():
    checkpoint.reset()
    yield
    checkpoint.reset()


@pytest.fixture
def storage(tmp_path, monkeypatch):
    """The job's and the API's result storage: one directory, as on a stack."""
    monkeypatch.setattr(checkpoint, "get_default_result_storage", lambda **_: LocalFileSystem(basepath=str(tmp_path)))
    return use_local_result_storage(monkeypatch, tmp_path)


def test_the_kept_program_reads_back_as_json_and_loads_into_a_fresh_module(storage):
    run_id, program, usage = str(uuid.uuid4()), compiled_program(), Usage()
    lm = program.lm
    assert checkpoint.keep_compiled_program(run_id, program, [SECRET], usage.result_of) is not None
    assert program.lm is lm, "evaluation still needs the program's LM"
    assert [p.name for p in storage.iterdir()] == [kept_program_key(run_id)], "no temporary file is left"

    kept = asyncio.run(read_kept_program(run_id))
    assert kept["details"]["usage"]["total"]["calls"] == 3
    assert SECRET not in json.dumps(kept)
    assert kept["program_artifact"]["program_pickle_base64"], "the artifact is whole, as after a success"
    fresh = dspy.Predict("question -> answer")
    fresh.load_state(kept["program_artifact"]["program_state"])
    assert fresh.demos[0]["answer"] == "4"


def test_a_stop_refreshes_the_usage_of_this_run_only(storage):
    run_id, usage = str(uuid.uuid4()), Usage()
    assert not checkpoint.refresh_kept_program(run_id), "nothing kept yet"
    checkpoint.keep_compiled_program(run_id, compiled_program(), [SECRET], usage.result_of)
    usage.calls = 11
    assert not checkpoint.refresh_kept_program(str(uuid.uuid4()))
    assert asyncio.run(read_kept_program(run_id))["details"]["usage"]["total"]["calls"] == 3
    assert checkpoint.refresh_kept_program(run_id)
    assert asyncio.run(read_kept_program(run_id))["details"]["usage"]["total"]["calls"] == 11


def test_a_program_holding_a_secret_is_not_kept(storage, caplog):
    run_id, program = str(uuid.uuid4()), compiled_program(demo_answer=SECRET)
    with caplog.at_level(logging.WARNING, logger="tasks.checkpoint"):
        kept = checkpoint.keep_compiled_program(run_id, program, [SECRET], Usage().result_of)
    assert kept is None and not list(storage.iterdir())
    assert "could not be kept before evaluation" in caplog.text and SECRET not in caplog.text


def test_a_storage_that_refuses_the_write_costs_the_job_nothing(tmp_path, monkeypatch, caplog):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    monkeypatch.setattr(checkpoint, "get_default_result_storage", lambda **_: LocalFileSystem(basepath=str(blocked)))
    with caplog.at_level(logging.WARNING, logger="tasks.checkpoint"):
        kept = checkpoint.keep_compiled_program(str(uuid.uuid4()), compiled_program(), [SECRET], Usage().result_of)
    assert kept is None and "a cancel or crash from here on would lose it" in caplog.text
    assert not checkpoint.refresh_kept_program(str(uuid.uuid4()))


def test_outside_a_flow_run_nothing_is_kept(storage):
    assert checkpoint.keep_compiled_program(None, compiled_program(), [SECRET], Usage().result_of) is None
    assert not list(storage.iterdir())


def test_a_storage_block_gets_the_same_file(monkeypatch):
    """Result storage that is not a local path (a storage block): written through the block."""
    remote = RemoteFileSystem(basepath=f"memory://kept-{uuid.uuid4().hex}")
    monkeypatch.setattr(checkpoint, "get_default_result_storage", lambda **_: remote)

    async def block_storage(block_id):
        return remote

    monkeypatch.setattr(result_files, "result_storage", block_storage)
    run_id = str(uuid.uuid4())
    checkpoint.keep_compiled_program(run_id, compiled_program(), [SECRET], Usage().result_of)
    assert asyncio.run(read_kept_program(run_id))["program_artifact"]["program_state"]
