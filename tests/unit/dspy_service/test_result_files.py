"""Stored results are read as JSON and nothing else; a job with any other result is failed."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
from prefect.serializers import CompressedJSONSerializer, JSONSerializer, PickleSerializer

from api.gateway import JobGateway, Outcome
from api.status import JobStatus
from dspy_service.result_files import UnreadableResult, decode_result_file, read_json_result
from dspy_service.settings import ServiceSettings
from tests.support.hostile_result import pickle_record, pickled_value
from tests.support.result_storage import use_local_result_storage

VALUE = {"program_artifact": {"path": None, "program_pickle_base64": "AAAA"}, "optimized_test_metric": 0.75}


def record(key: str, value, serializer) -> ResultRecord:
    return ResultRecord(metadata=ResultRecordMetadata(storage_key=key, serializer=serializer), result=value)


def completed_run(key: str, serializer_type: str | None = "json") -> dict:
    data = {"storage_key": key, "storage_block_id": None}
    if serializer_type:
        data["serializer"] = {"type": serializer_type}
    state = {"id": str(uuid.uuid4()), "type": "COMPLETED", "name": "Completed", "data": data}
    return {"id": str(uuid.uuid4()), "state_type": "COMPLETED", "state": state}


@pytest.fixture
def storage(tmp_path, monkeypatch) -> Path:
    """Results live under tmp_path (as under PREFECT_LOCAL_STORAGE_PATH on a stack)."""
    return use_local_result_storage(monkeypatch, tmp_path)


def gateway() -> JobGateway:
    return JobGateway(client=None, settings=ServiceSettings())


def outcome(gw: JobGateway, run: dict) -> Outcome:
    async def compile_started(runs):
        return set()

    gw.compile_started = compile_started
    return asyncio.run(gw.outcome(run))


@pytest.mark.parametrize("whole_record", [False, True], ids=["value alone (flows)", "whole record"])
def test_a_json_result_written_by_prefect_is_read_and_cached(storage, whole_record):
    key = str(storage / "result-json")
    written = record(key, VALUE, JSONSerializer())
    Path(key).write_bytes(written.serialize() if whole_record else written.serialize_result())
    gw, run = gateway(), completed_run(key)
    first = outcome(gw, run)
    assert (first.status, first.result, first.message) == (JobStatus.success, VALUE, None)
    Path(key).unlink()
    assert outcome(gw, run).result == VALUE, "results never change: the second read is cached"


def test_a_record_rewritten_as_a_pickle_is_refused_and_never_loaded(storage, tmp_path_factory):
    proof = tmp_path_factory.mktemp("proof") / "touched"
    key = str(storage / "result-pickle")
    Path(key).write_bytes(pickle_record(key, proof))
    ResultRecord.deserialize(Path(key).read_bytes(), backup_serializer=JSONSerializer())
    assert proof.exists(), "the file does run code when Prefect loads it"

    marker = storage / "marker"
    Path(key).write_bytes(pickle_record(key, marker))
    job = outcome(gateway(), completed_run(key))
    assert job.status is JobStatus.failed and job.result is None
    assert job.message == "unreadable result: the result was written with the 'pickle' serializer; only 'json' is read"
    assert not marker.exists()


@pytest.mark.parametrize("serializer_type", ["pickle", "compressed/json", None])
def test_a_state_naming_another_serializer_is_refused_unread(storage, tmp_path_factory, serializer_type):
    proof = tmp_path_factory.mktemp("proof") / "touched"
    ResultRecord.deserialize(pickled_value(proof), backup_serializer=PickleSerializer())
    assert proof.exists(), "a pickled value runs code when Prefect loads it by the state's serializer"

    marker, key = storage / "marker", str(storage / "result")
    Path(key).write_bytes(pickled_value(marker))
    job = outcome(gateway(), completed_run(key, serializer_type))
    assert job.status is JobStatus.failed
    assert job.message == (
        f"unreadable result: the result was written with the {serializer_type!r} serializer; only 'json' is read"
    )
    assert not marker.exists()


def test_records_with_other_serializers_and_files_that_are_not_json_are_refused():
    compressed = record("k", VALUE, CompressedJSONSerializer()).serialize()
    with pytest.raises(UnreadableResult, match="'compressed/json'"):
        decode_result_file(compressed)
    legacy = b'{"data": "gAWV", "serializer": {"type": "pickle"}}'
    for raw, why in (
        (legacy, "'pickle'"),
        (b'{"metadata": [], "result": "{}"}', "None"),
        (b"\x80\x04not json", "not JSON"),
        (b'{"metadata": {"serializer": {"type": "json"}}, "result": "{oops"}', "value is not JSON"),
        (b'{"metadata": {"serializer": {"type": "json"}}, "result": 3}', "no JSON text"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
    ):
        with pytest.raises(UnreadableResult, match=why):
            decode_result_file(raw)


def test_a_result_that_is_not_an_object_or_not_there_makes_the_job_failed(storage):
    key = str(storage / "result")
    Path(key).write_bytes(b"[1, 2]")
    with pytest.raises(UnreadableResult, match="not a JSON object"):
        asyncio.run(read_json_result(completed_run(key)))
    job = outcome(gateway(), completed_run(str(storage / "gone")))
    assert job.status is JobStatus.failed
    assert job.message == "unreadable result: the result file cannot be read (ValueError)"
    outside = outcome(gateway(), completed_run("/etc/hostname"))
    assert outside.message == "unreadable result: the run's state names a result outside the result storage"
    run = completed_run("x")
    run["state"]["data"] = {"program_artifact": {}}
    assert outcome(gateway(), run).message == "unreadable result: the run's state holds no result record"
    run["state"]["data"] = None
    assert outcome(gateway(), run) == Outcome(JobStatus.success)


@pytest.mark.parametrize("key", ["{base}/{other}/result", "{other}/result", "../result", "{base}/../result"])
def test_a_state_that_names_another_job_s_result_directory_is_refused(storage, key):
    """A sandboxed job sets its own state: it must not point the reader at another job's file."""
    other = storage / "victim-run-id"
    other.mkdir()
    (other / "result").write_bytes(orjson_value())
    (storage.parent / "result").write_bytes(orjson_value())
    run = completed_run(key.format(base=storage, other="victim-run-id"))
    with pytest.raises(UnreadableResult, match="outside"):
        asyncio.run(read_json_result(run))


def test_a_sandboxed_job_s_result_is_read_from_its_own_directory(storage):
    run = completed_run(str(storage / "result-key"))
    own = storage / run["id"]
    own.mkdir()
    (own / "result-key").write_bytes(orjson_value())
    assert asyncio.run(read_json_result(run)) == VALUE


def orjson_value() -> bytes:
    return record("unused", VALUE, JSONSerializer()).serialize_result()


def test_runs_that_did_not_complete_read_no_result(storage):
    run = completed_run(str(storage / "never-read"))
    run["state_type"] = run["state"]["type"] = "FAILED"
    assert outcome(gateway(), run) == Outcome(JobStatus.failed)
