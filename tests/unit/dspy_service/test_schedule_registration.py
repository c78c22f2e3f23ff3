"""A schedule's `register_as`: what the trusted side registers for a promoted run, and what it refuses.

The Prefect server is an in-memory stand-in for the few calls the registration makes
(read a run and its deployment's schedules, Variables as the registry keeps them); the
real server and the sandboxed path are covered by tests/integration/test_schedule_registry.py.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from typing import Any

import httpx
import pytest
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
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
from dspy_service.settings import get_settings
from tests.support.payloads import job_payload

SCHEDULE, DEPLOYMENT, RUN = (str(uuid.uuid4()) for _ in range(3))
TARGET = {"program": "nightly-qa", "alias": "production"}


def job() -> dict[str, Any]:
    payload = job_payload("http://127.0.0.1:9", rows=4)
    payload.pop("dataset")
    return payload


def schedule(**parameters) -> dict[str, Any]:
    return {"id": SCHEDULE, "deployment_id": DEPLOYMENT,
            "parameters": {"job": job(), "schedule_id": SCHEDULE, "register_as": TARGET, **parameters}}


def run(state: str = "RUNNING", **parameters) -> dict[str, Any]:
    return {"id": RUN, "deployment_id": DEPLOYMENT, "state": {"type": state, "name": state.title()},
            "parameters": {"job": job(), "schedule_id": SCHEDULE, **parameters}}


def program(score: float = 0.8) -> dict[str, Any]:
    """What a job sends: its own program (plus things the trusted side must drop)."""
    prompt = {"predictor_name": "self", "instructions": "Add.", "input_fields": ["question"],
              "output_fields": ["answer"], "demos": [{"inputs": {"question": "1+1"}, "outputs": {"answer": "2"}}]}
    return {
        "baseline_test_metric": 0.3, "optimized_test_metric": score, "metric_improvement": score - 0.3,
        "split_counts": {"train": 2, "val": 1, "test": 1}, "metric_name": "exact",
        "program_artifact": {"program_state": {"demos": [], "signature": {}}, "optimized_prompts": [prompt],
                             "metadata": {}, "program_pickle_base64": "gASV"},
        "details": {"dataset_rows": 4, "dataset_sha256": "abc", "owner": "mallory"},
        "name": "someone-elses-program", "owner": "mallory",
    }


class Prefect:
    """The Prefect API calls a registration makes, in memory."""

    def __init__(self):
        self.runs = {RUN: run()}
        self.schedules = [schedule()]
        self.variables: dict[str, dict[str, Any]] = {}

    def _response(self, method: str, path: str, body: Any, status: int = 200) -> httpx.Response:
        request = httpx.Request(method, f"http://prefect/api{path}")
        return httpx.Response(status, json=body, request=request).raise_for_status()

    async def request(self, method: str, path: str, path_params: dict | None = None, json: Any = None):
        url = path.format(**(path_params or {}))
        if method == "GET" and path == "/flow_runs/{id}":
            found = self.runs.get(path_params["id"])
            return self._response(method, url, copy.deepcopy(found), 200 if found else 404)
        if method == "GET" and path == "/deployments/{id}/schedules":
            found = [s for s in self.schedules if s["deployment_id"] == path_params["id"]]
            return self._response(method, url, copy.deepcopy(found))
        if method == "POST" and path == "/variables/filter":
            like = json["variables"]["name"]["like_"].strip("%")
            names = sorted(n for n in self.variables if like in n)[json["offset"]:json["offset"] + json["limit"]]
            return self._response(method, url, [{"name": n, "value": self.variables[n]} for n in names])
        if method == "PATCH" and path == "/variables/name/{name}":
            self.variables[path_params["name"]] = copy.deepcopy(json["value"])
            return self._response(method, url, None)
        raise AssertionError(f"unexpected {method} {path}")

    async def create_variable(self, variable):
        if variable.name in self.variables:
            raise ObjectAlreadyExists(http_exc=Exception())
        self.variables[variable.name] = copy.deepcopy(variable.value)

    async def read_variable_by_name(self, name: str):
        value = self.variables.get(name)
        return None if value is None else type("Variable", (), {"value": copy.deepcopy(value)})()

    async def delete_variable_by_name(self, name: str):
        if self.variables.pop(name, None) is None:
            raise ObjectNotFound(http_exc=Exception())


@pytest.fixture
def prefect(tmp_path, monkeypatch) -> Prefect:
    monkeypatch.setenv("DSPY_SERVICE_STORAGE_URL", str(tmp_path / "storage"))
    get_settings.cache_clear()
    yield Prefect()
    get_settings.cache_clear()


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
