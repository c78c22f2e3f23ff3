"""A schedule's `register_as`: what the trusted side registers for a promoted run, and what it refuses.

The Prefect server is an in-memory stand-in (tests/support/memory_prefect.py); the real
server and the sandboxed path are covered by tests/integration/test_schedule_registry.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from pydantic import ValidationError

from dspy_service.program_store import ProgramStore, read_document
from dspy_service.schedule_registration import (
    RegisterAs,
    RegistrationRefused,
    check_schedule_run,
    register_as_of,
    register_promoted_run,
    result_like,
)
from tests.support.memory_prefect import RUN, TARGET, Prefect, in_memory_prefect, job, program, run, schedule


@pytest.fixture
def prefect(tmp_path, monkeypatch) -> Prefect:
    yield from in_memory_prefect(tmp_path, monkeypatch)


def register(prefect: Prefect, body: Any = None, run_id: str = RUN):
    return asyncio.run(register_promoted_run(prefect, run_id, program() if body is None else body))


def registry(prefect: Prefect, owner: str = "tester", name: str = "nightly-qa"):
    store = ProgramStore(prefect)  # type: ignore[arg-type]
    return asyncio.run(store.versions(owner, name)), asyncio.run(store.aliases(owner, name))


def test_register_as_names_a_program_and_alias_of_the_registry():
    assert RegisterAs.model_validate(TARGET).program == "nightly-qa"
    for bad, field in (({"program": "Nightly QA", "alias": "prod"}, "program"),
                       ({"program": "qa", "alias": "-prod"}, "alias"),
                       ({"program": "qa"}, "alias"),
                       ({"program": "qa", "alias": "prod", "owner": "mallory"}, "owner")):
        with pytest.raises(ValidationError) as info:
            RegisterAs.model_validate(bad)
        assert info.value.errors()[0]["loc"] == (field,)
    assert register_as_of({"register_as": TARGET}) == RegisterAs(**TARGET)
    assert register_as_of({"register_as": {"program": "BAD", "alias": "x"}}) is None
    assert register_as_of({}) is None and register_as_of(None) is None


def test_only_what_a_version_document_uses_is_taken_from_the_job():
    taken = result_like(program())
    assert set(taken) == {"baseline_test_metric", "optimized_test_metric", "metric_improvement", "split_counts",
                          "metric_name", "program_artifact", "details"}
    assert set(taken["program_artifact"]) == {"program_state", "optimized_prompts", "metadata"}  # no pickle
    assert taken["details"] == {"dataset_rows": 4, "dataset_sha256": "abc"}
    with pytest.raises(RegistrationRefused):
        result_like([1, 2])


@pytest.mark.parametrize(
    ("changed_run", "changed_schedule", "reason"),
    [
        (run(schedule_id=str(uuid.uuid4())), schedule(), "not a run of schedule"),
        ({**run(), "deployment_id": str(uuid.uuid4())}, schedule(), "not a run of the schedule's deployment"),
        (run("COMPLETED"), schedule(), "not Running"),
        (run(job={**job(), "username": "mallory"}), schedule(), "not the schedule's owner"),
        (run(), schedule(job={**job(), "username": "mallory"}), "not the schedule's owner"),
        (run(job={"username": "tester"}), schedule(), "no valid job payload"),
        (None, schedule(), "no longer exists"),
    ],
)
def test_a_run_qualifies_only_as_a_running_run_of_the_schedule_of_its_owner(changed_run, changed_schedule, reason):
    assert check_schedule_run(run(), schedule()).username == "tester"
    with pytest.raises(RegistrationRefused, match=reason):
        check_schedule_run(changed_run, changed_schedule)


def test_a_promoted_run_becomes_the_next_version_and_the_alias_follows(prefect):
    registered, reason = register(prefect)
    assert registered == {"program": "nightly-qa", "version": 1, "alias": "production"} and "v1" in reason
    (entry,), aliases = registry(prefect)
    assert (entry.job_id, aliases) == (RUN, {"production": 1})
    document = read_document(entry)
    # The schedule's owner and program, whatever the job's body claimed; the job's own program.
    assert (document["owner"], document["name"], document["job_id"]) == ("tester", "nightly-qa", RUN)
    assert document["program_state"] == program()["program_artifact"]["program_state"]
    assert document["demo_count"] == 1 and document["metrics"]["optimized_test_metric"] == 0.8
    assert "program_pickle_base64" not in json.dumps(document) and "mallory" not in json.dumps(document)
    assert registry(prefect, owner="mallory", name="someone-elses-program") == ([], {})

    # Asked again for the same run (a client retry): the same version, no second one.
    assert register(prefect)[0] == registered
    assert [e.version for e in registry(prefect)[0]] == [1]

    # The next promoted run: v2, and the alias moves.
    second = str(uuid.uuid4())
    prefect.runs[second] = {**run(), "id": second}
    assert register(prefect, run_id=second)[0] == {"program": "nightly-qa", "version": 2, "alias": "production"}
    versions, aliases = registry(prefect)
    assert [(e.version, e.job_id) for e in versions] == [(1, RUN), (2, second)] and aliases == {"production": 2}


def test_what_is_not_registered_and_why(prefect):
    prefect.schedules = [schedule(register_as=None)]
    assert register(prefect) == (None, "the schedule has no register_as (any more): nothing registered")
    prefect.schedules = []
    with pytest.raises(RegistrationRefused, match="schedule no longer exists"):
        register(prefect)
    prefect.schedules = [schedule()]
    with pytest.raises(RegistrationRefused, match="no program state"):
        register(prefect, {**program(), "program_artifact": {}})
    with pytest.raises(RegistrationRefused, match="run no longer exists"):
        register(prefect, run_id=str(uuid.uuid4()))
    with pytest.raises(RegistrationRefused, match="not a flow-run id"):
        register(prefect, run_id="../other")
    assert registry(prefect) == ([], {})


def test_a_document_that_cannot_be_written_leaves_no_version_and_a_retry_registers(prefect, monkeypatch):
    """ProgramStore.register gives the claimed number up (a tombstone: numbers are never
    reused) when the document cannot be written, so no entry without a document is left."""
    from dspy_service import program_store

    real = program_store.write_document

    def full_disk(url, document):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(program_store, "write_document", full_disk)
    with pytest.raises(OSError, match="No space left"):
        register(prefect)
    assert registry(prefect) == ([], {}), "no readable version"
    assert all("deleted_at" in value for value in prefect.variables.values()), prefect.variables
    monkeypatch.setattr(program_store, "write_document", real)
    assert register(prefect)[0] == {"program": "nightly-qa", "version": 2, "alias": "production"}
    (entry,), _ = registry(prefect)
    assert read_document(entry)["job_id"] == RUN
