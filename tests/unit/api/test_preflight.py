"""The API's egress checks (api/preflight.py `check_egress`) as the routes answer them: a
model `base_url` or a `dataset_source` the egress policy denies is a 400 naming the field,
on POST /run, POST /schedules and PATCH /schedules/{id}; allowed ones are accepted.

No Prefect here: the routes get the submission service with the in-memory gateways of
test_submission.py, and the schedule a PATCH changes is one of those.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.deps import get_schedule, get_submission
from api.gateway import JobGateway
from api.identity import Caller, current_user
from api.main import create_app
from dspy_service.settings import ServiceSettings, get_settings
from tests.support.payloads import job_payload, light_optimizer_payload, model_config
from tests.unit.api.test_submission import Jobs, Schedules, Secrets, service, stored_schedule

PUBLIC_LM = "http://8.8.8.8/v1"  # a public literal address: allowed, and never called here


@pytest.fixture
def api():
    get_settings.cache_clear()
    app = create_app()
    app.state.gateway = JobGateway(client=None, settings=ServiceSettings())
    app.dependency_overrides[current_user] = lambda: Caller("tester", admin=False)
    app.state.jobs = Jobs()
    app.dependency_overrides[get_submission] = lambda: service(app.state.jobs, Schedules(), Secrets())
    app.dependency_overrides[get_schedule] = stored_schedule
    yield TestClient(app)
    get_settings.cache_clear()


def with_dataset_url(url: str) -> dict:
    return job_payload(PUBLIC_LM, dataset=None, dataset_source=url, dataset_format="json")


def with_reflection_url(url: str) -> dict:
    payload = light_optimizer_payload(PUBLIC_LM, "gepa")
    payload["reflection_model_config"] = model_config(url, name="openai/reflect")
    return payload


DENIED = {
    "metadata IP": (job_payload("http://169.254.169.254/latest/meta-data"), "model_config.base_url", "metadata"),
    "Prefect port": (with_dataset_url("http://127.0.0.1:4200/api/flow_runs/x"), "dataset_source", "loopback"),
    "private IP": (job_payload("http://10.1.2.3:8000/v1"), "model_config.base_url", "private"),
    "localhost": (job_payload("http://localhost:8765/v1"), "model_config.base_url", "loopback"),
    "CGNAT": (job_payload("http://100.64.0.7/v1"), "model_config.base_url", "CGNAT"),
    "role config": (with_reflection_url("http://127.0.0.1:8765/v1"), "reflection_model_config.base_url", "loopback"),
}
# What a PATCH sends to turn the stored schedule's job into the denied one.
PATCHED_FIELDS = ("model_config", "reflection_model_config", "dataset", "dataset_source", "dataset_format",
                  "optimizer_name", "optimizer_kwargs", "module_name")


@pytest.mark.parametrize("payload, field, kind", DENIED.values(), ids=DENIED.keys())
def test_a_denied_url_is_a_400_naming_the_field_on_every_route(api, egress_allow, payload, field, kind):
    egress_allow("127.0.0.1:1")  # the stored schedule's own LM (test_submission.py)
    patch = {key: payload[key] for key in PATCHED_FIELDS if key in payload}
    answers = {
        "POST /run": api.post("/run", json=payload),
        "POST /schedules": api.post("/schedules", json={**payload, "interval_seconds": 3600}),
        "PATCH /schedules/{id}": api.patch("/schedules/any", json=patch),
    }
    for route, answer in answers.items():
        assert answer.status_code == 400, (route, answer.text)
        body = answer.json()
        assert body["field"] == field and f"{field} is not allowed" in body["detail"], (route, body)
        assert kind in body["detail"], (route, body)
    assert api.app.state.jobs.created == []


def test_the_operator_allow_list_lets_loopback_and_private_targets_through(api, egress_allow):
    egress_allow("127.0.0.1:8765", "10.0.0.0/8", "localhost:9000")
    for url in ("http://127.0.0.1:8765/v1", "http://10.1.2.3:8000/v1", "http://localhost:9000/v1"):
        answer = api.post("/run", json=job_payload(url, rows=20))
        assert answer.status_code == 201, (url, answer.text)
    denied = api.post("/run", json=job_payload("http://127.0.0.1:4200/api", rows=20))  # not the allowed port
    assert denied.status_code == 400 and "loopback" in denied.json()["detail"]
    metadata = api.post("/run", json=job_payload("http://169.254.169.254/", rows=20))
    assert metadata.status_code == 400 and "always denied" in metadata.json()["detail"]
    assert len(api.app.state.jobs.created) == 3


def test_a_public_literal_address_and_an_unresolvable_name_pass(api):
    assert api.post("/run", json=job_payload(PUBLIC_LM, rows=20)).status_code == 201
    unresolvable = job_payload("https://no-such-llm.invalid/v1", rows=20)  # the proxy decides when the job connects
    assert api.post("/run", json=unresolvable).status_code == 201
    assert len(api.app.state.jobs.created) == 2


def test_a_file_source_outside_the_dataset_dirs_or_inside_the_home_is_a_400(api, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.json").write_text("[]")
    monkeypatch.setenv("DSPY_SERVICE_DATASET_DIRS", str(data))
    monkeypatch.setenv("DSPY_SERVICE_HOME", str(data / "home"))
    get_settings.cache_clear()
    allowed = api.post("/run", json=with_dataset_url(str(data / "train.json")))
    assert allowed.status_code == 201, allowed.text
    for path in ("/etc/shadow", str(data / "home" / "prefect.db"), f"file://{data}/../x.json"):
        answer = api.post("/run", json=with_dataset_url(path))
        assert answer.status_code == 400 and answer.json()["field"] == "dataset_source", (path, answer.text)
        assert "not in a directory jobs may read" in answer.json()["detail"]
    monkeypatch.delenv("DSPY_SERVICE_DATASET_DIRS")
    get_settings.cache_clear()
    off = api.post("/run", json=with_dataset_url(str(data / "train.json")))
    assert off.status_code == 400 and "DSPY_SERVICE_DATASET_DIRS" in off.json()["detail"]


def with_extra(**extra) -> dict:
    payload = job_payload(PUBLIC_LM)
    config = payload["model_config"]
    payload["model_config"] = {**config, "extra": {**config.get("extra", {}), **extra}}
    return payload


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"max_tokens": 64}, "model_config.extra.max_tokens"),  # conflicts with model_config.max_tokens below
        ({"model": "openai/other"}, "model_config.extra.model"),
        ({"meter": 1}, "model_config.extra.meter"),
        ({"messages": []}, "model_config.extra.messages"),
    ],
)
def test_an_lm_setting_the_service_cannot_pass_is_a_400_naming_it(api, extra, field):
    payload = with_extra(**extra)
    payload["model_config"]["max_tokens"] = 32
    answer = api.post("/run", json=payload)
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == field and field in answer.json()["detail"], answer.json()
    assert api.app.state.jobs.created == []


def test_settings_given_in_extra_move_to_their_fields(api):
    payload = with_extra(max_tokens=64, temperature=0.5, api_base=PUBLIC_LM)
    for field in ("max_tokens", "temperature", "base_url"):
        payload["model_config"].pop(field, None)
    answer = api.post("/run", json=payload)
    assert answer.status_code == 201, answer.text
    job = api.app.state.jobs.created[0]["parameters"]["job"]["model_config"]
    assert (job["max_tokens"], job["temperature"], job["base_url"]) == (64, 0.5, PUBLIC_LM)
    assert not {"max_tokens", "temperature", "api_base"} & set(job["extra"]), job["extra"]


def test_the_submission_answer_lists_the_fields_it_ignored(api):
    answer = api.post("/run", json={**job_payload(PUBLIC_LM), "num_thread": 2, "optimiser_name": "x"})
    assert answer.status_code == 201, answer.text
    assert answer.json()["ignored_fields"] == ["num_thread", "optimiser_name"]
