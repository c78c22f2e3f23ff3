"""An in-memory stand-in of the Prefect API calls the program registry makes
(dspy_service/program_store.py: Variables) and a schedule's registration adds
(dspy_service/schedule_registration.py: read a run and its deployment's schedules). For
unit tests only; the real server is covered by tests/integration/test_programs.py and
test_schedule_registry.py."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import httpx
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

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
            prefix = json["variables"]["name"]["like_"].rstrip("%")
            names = sorted(n for n in self.variables if n.startswith(prefix))
            names = names[json["offset"] : json["offset"] + json["limit"]]
            return self._response(method, url, [{"name": n, "value": self.variables[n]} for n in names])
        if method == "PATCH" and path == "/variables/name/{name}":
            if path_params["name"] not in self.variables:
                return self._response(method, url, {"detail": "Variable not found"}, 404)
            self.variables[path_params["name"]] = copy.deepcopy(json["value"])
            return self._response(method, url, None)
        raise AssertionError(f"unexpected {method} {path}")

    async def create_variable(self, variable):
        if variable.name in self.variables:
            raise ObjectAlreadyExists(http_exc=Exception())
        self.variables[variable.name] = copy.deepcopy(variable.value)

    async def update_variable(self, variable):
        if variable.name not in self.variables:
            raise ObjectNotFound(http_exc=Exception())
        self.variables[variable.name] = copy.deepcopy(variable.value)

    async def read_variable_by_name(self, name: str):
        value = self.variables.get(name)
        return None if value is None else type("Variable", (), {"value": copy.deepcopy(value)})()

    async def delete_variable_by_name(self, name: str):
        if self.variables.pop(name, None) is None:
            raise ObjectNotFound(http_exc=Exception())


def in_memory_prefect(tmp_path, monkeypatch):
    """(A fixture's body) an in-memory Prefect, the registry's documents stored under tmp_path."""
    monkeypatch.setenv("DSPY_SERVICE_STORAGE_URL", str(tmp_path / "storage"))
    get_settings.cache_clear()
    yield Prefect()
    get_settings.cache_clear()
