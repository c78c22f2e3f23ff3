"""What a job kept once compiled is read back as JSON only, for a job that ended without a
result of its own (cancelled, crashed, out of time), and deleted with the job."""

from __future__ import annotations

import asyncio
import json
import pickle
import uuid
from pathlib import Path

import pytest

from api.gateway import JobGateway
from api.kept_programs import delete_kept_program, read_kept_program
from dspy_service.contract import kept_program_key
from dspy_service.settings import ServiceSettings
from tests.support.result_storage import use_local_result_storage

KEPT = {
    "program_artifact": {"program_state": {"predict": {"demos": [], "signature": {"instructions": "Add."}}}},
    "details": {"usage": {"total": {"calls": 7}}, "compile_seconds": 1.5},
    "optimized_test_metric": None,
}


@pytest.fixture
def storage(tmp_path, monkeypatch) -> Path:
    return use_local_result_storage(monkeypatch, tmp_path)


def keep(storage: Path, run_id: str, content: bytes, sandboxed: bool = True) -> Path:
    """Write a kept program where a (sandboxed) job writes it."""
    path = storage / run_id / kept_program_key(run_id) if sandboxed else storage / kept_program_key(run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def run_in(state_type: str, data: dict | None = None) -> dict:
    state = {"id": str(uuid.uuid4()), "type": state_type, "message": "cancelled by the user", "data": data}
    return {"id": str(uuid.uuid4()), "state_type": state_type, "state": state}


def kept_result(run: dict) -> dict | None:
    return asyncio.run(JobGateway(client=None, settings=ServiceSettings()).kept_result(run))


@pytest.mark.parametrize("sandboxed", [True, False], ids=["own result directory", "unsandboxed"])
def test_a_kept_program_is_read_where_the_job_wrote_it(storage, sandboxed):
    run_id = str(uuid.uuid4())
    keep(storage, run_id, json.dumps(KEPT).encode(), sandboxed=sandboxed)
    assert asyncio.run(read_kept_program(run_id)) == KEPT


def test_a_job_that_kept_nothing_reads_as_none(storage):
    assert asyncio.run(read_kept_program(str(uuid.uuid4()))) is None


def test_another_jobs_kept_program_is_never_read(storage):
    mine, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    keep(storage, theirs, json.dumps(KEPT).encode())
    # Even a file named like mine inside their directory (the one a job of theirs can write).
    (storage / theirs / kept_program_key(mine)).write_bytes(json.dumps(KEPT).encode())
    assert asyncio.run(read_kept_program(mine)) is None


@pytest.mark.parametrize(
    "content",
    [
        pickle.dumps(KEPT),
        b"{not json",
        json.dumps({"program_artifact": {"program_pickle_base64": "AAAA"}}).encode(),
        json.dumps(["a", "list"]).encode(),
        json.dumps({"metadata": {"serializer": {"type": "pickle"}}, "result": "gASV"}).encode(),
    ],
    ids=["pickle", "not json", "no program state", "not an object", "a pickle record"],
)
def test_content_that_is_not_a_json_program_state_is_refused(storage, content):
    run_id = str(uuid.uuid4())
    keep(storage, run_id, content)
    assert asyncio.run(read_kept_program(run_id)) is None


@pytest.mark.parametrize("state_type", ["CANCELLED", "CANCELLING", "CRASHED", "FAILED"])
def test_a_run_that_ended_without_a_result_shows_what_it_kept(storage, state_type):
    run = run_in(state_type)
    keep(storage, run["id"], json.dumps(KEPT).encode())
    assert kept_result(run) == KEPT


@pytest.mark.parametrize("state_type", ["COMPLETED", "RUNNING", "PENDING"])
def test_a_run_that_did_not_end_without_a_result_shows_nothing_kept(storage, state_type):
    run = run_in(state_type)
    keep(storage, run["id"], json.dumps(KEPT).encode())
    assert kept_result(run) is None


def test_a_failed_runs_own_kept_result_comes_first(storage):
    stored = {**KEPT, "details": {"failed": "evaluation failed: ...", "usage": {"total": {"calls": 9}}}}
    key = storage / "result-json"
    key.write_text(json.dumps(stored))
    run = run_in("FAILED", {"storage_key": str(key), "serializer": {"type": "json"}})
    keep(storage, run["id"], json.dumps(KEPT).encode())
    assert kept_result(run) == stored


def test_a_failed_run_whose_own_result_is_unreadable_falls_back_to_what_it_kept(storage):
    run = run_in("FAILED", {"storage_key": str(storage / "gone"), "serializer": {"type": "json"}})
    keep(storage, run["id"], json.dumps(KEPT).encode())
    assert kept_result(run) == KEPT


def test_deleting_removes_both_places_and_the_empty_directory(storage):
    run_id = str(uuid.uuid4())
    inside = keep(storage, run_id, b"{}")
    outside = keep(storage, run_id, b"{}", sandboxed=False)
    other = keep(storage, str(uuid.uuid4()), b"{}")
    asyncio.run(delete_kept_program(run_id))
    assert not inside.exists() and not outside.exists() and not inside.parent.exists()
    assert other.exists(), "another job's kept program stays"
    asyncio.run(delete_kept_program(run_id))  # nothing left: no error


def test_deleting_keeps_a_directory_that_still_holds_the_result(storage):
    run_id = str(uuid.uuid4())
    inside = keep(storage, run_id, b"{}")
    result = inside.parent / "result-json"
    result.write_text("{}")
    asyncio.run(delete_kept_program(run_id))
    assert not inside.exists() and result.exists()
