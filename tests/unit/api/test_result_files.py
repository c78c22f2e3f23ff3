"""Stored results are read as JSON and nothing else; a job with any other result is failed."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
from prefect.filesystems import LocalFileSystem
from prefect.serializers import CompressedJSONSerializer, JSONSerializer

from api import result_files
from api.gateway import JobGateway, Outcome
from api.result_files import UnreadableResult, decode_json_record, read_json_result
from api.status import JobStatus
from dspy_service.settings import ServiceSettings
from tests.support.hostile_result import pickle_record

VALUE = {"program_artifact": {"path": None, "program_pickle_base64": "AAAA"}, "optimized_test_metric": 0.75}


def prefect_record(key: str, value, serializer) -> bytes:
    metadata = ResultRecordMetadata(storage_key=key, serializer=serializer)
    return ResultRecord(metadata=metadata, result=value).serialize()


def completed_run(key: str, serializer_type: str = "json") -> dict:
    data = {"storage_key": key, "serializer": {"type": serializer_type}, "storage_block_id": None}
    state = {"id": str(uuid.uuid4()), "type": "COMPLETED", "name": "Completed", "data": data}
    return {"id": str(uuid.uuid4()), "state_type": "COMPLETED", "state": state}


@pytest.fixture
def storage(tmp_path, monkeypatch) -> Path:
    """Results live under tmp_path (as under PREFECT_LOCAL_STORAGE_PATH on a stack)."""

    async def local_storage(block_id):
        return LocalFileSystem(basepath=str(tmp_path))

    monkeypatch.setattr(result_files, "result_storage", local_storage)
    return tmp_path


def gateway() -> JobGateway:
    return JobGateway(client=None, settings=ServiceSettings())


def outcome(gw: JobGateway, run: dict):
    async def compile_started(runs):
        return set()

    gw.compile_started = compile_started
    return asyncio.run(gw.outcome(run))


def test_a_json_result_written_by_prefect_is_read_and_cached(storage):
    key = str(storage / "result-json")
    Path(key).write_bytes(prefect_record(key, VALUE, JSONSerializer()))
    gw, run = gateway(), completed_run(key)
    first = outcome(gw, run)
    assert (first.status, first.result, first.message) == (JobStatus.success, VALUE, None)
    Path(key).unlink()
    assert outcome(gw, run).result == VALUE, "results never change: the second read is cached"


def test_a_pickled_result_is_refused_and_never_loaded(storage, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("proof") / "touched"
    key = str(storage / "result-pickle")
    Path(key).write_bytes(pickle_record(key, elsewhere))
    ResultRecord.deserialize(Path(key).read_bytes())
    assert elsewhere.exists(), "the payload does run code when Prefect loads it"

    marker = storage / "marker"
    Path(key).write_bytes(pickle_record(key, marker))
    for run in (completed_run(key), completed_run(key, serializer_type="pickle")):
        job = outcome(gateway(), run)
        assert job.status is JobStatus.failed and job.result is None
        assert job.message.startswith("unreadable result: ") and "'pickle'" in job.message
    assert not marker.exists()


def test_other_serializers_and_non_records_are_refused(storage):
    key = str(storage / "result")
    compressed = prefect_record(key, VALUE, CompressedJSONSerializer())
    with pytest.raises(UnreadableResult, match="'compressed/json'"):
        decode_json_record(compressed)
    for raw, why in (
        (b"\x80\x04not json", "not a JSON result record"),
        (b"[1, 2]", "not a result record"),
        (b'{"metadata": {"serializer": {"type": "json"}}, "result": "{oops"}', "not valid JSON"),
        (b'{"metadata": {}, "result": "{}"}', "None"),
        (b"[" * 100_000 + b"]" * 100_000, "not a JSON result record"),
    ):
        with pytest.raises(UnreadableResult, match=why):
            decode_json_record(raw)
    Path(key).write_bytes(prefect_record(key, [1, 2], JSONSerializer()))
    with pytest.raises(UnreadableResult, match="not a JSON object"):
        asyncio.run(read_json_result(completed_run(key)))


def test_a_missing_file_or_a_state_without_a_record_makes_the_job_failed(storage):
    job = outcome(gateway(), completed_run(str(storage / "gone")))
    assert job.status is JobStatus.failed and job.message.startswith("unreadable result: the result file cannot")
    run = completed_run("x")
    run["state"]["data"] = {"program_artifact": {}}
    assert outcome(gateway(), run).message == "unreadable result: the run's state holds no result record"
    run["state"]["data"] = None
    assert outcome(gateway(), run) == Outcome(JobStatus.success)


def test_runs_that_did_not_complete_read_no_result(storage):
    run = completed_run(str(storage / "never-read"))
    run["state_type"] = run["state"]["type"] = "FAILED"
    job = outcome(gateway(), run)
    assert (job.status, job.result, job.message) == (JobStatus.failed, None, None)
