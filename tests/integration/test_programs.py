"""The program registry on a real stack with the local LM: register two real jobs' programs
as v1 and v2, alias and move, refuse deleting an aliased version, keep a version after its
job is deleted, export a zip that a fresh process loads (no pickle) and runs against the
local LM, and answer another user, unknown names and bad input with 404/4xx naming the field.

Two jobs (labeled few-shot with k=0 and k=4: no demos and four demos) run once for the
module and are shared by every test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest

from dspy_service.client import Client, Conflict, InvalidRequest, NotFound
from tests.support.payloads import SECRET_KEY, job_payload

pytestmark = pytest.mark.sqlite_only

FRESH_PROCESS = textwrap.dedent(
    """
    import json
    import sys

    import dspy

    from dspy_service.client import load_program
    from dspy_service.testing.local_lm import make_arithmetic_dataset

    lm_url, questions = sys.argv[1], [row["question"] for row in make_arithmetic_dataset(12, seed=4242)]
    lm = dspy.LM("openai/local-arithmetic", api_base=lm_url, api_key="local", cache=False)
    answers = {}
    for source in sys.argv[2:]:
        name, _, alias = source.partition("@")
        program = load_program(name, alias=alias) if alias else load_program(name)
        with dspy.context(lm=lm):
            answers[source] = {
                "demos": len(program.demos),
                "answers": [str(program(question=q).answer).strip() for q in questions],
            }
    print(json.dumps({"answers": answers}))
    """
)


@dataclass
class Registry:
    alice: httpx.Client
    mallory: httpx.Client
    alice_token: str
    zero_shot_job: str  # labeled few-shot, k=0: no demos
    few_shot_job: str  # labeled few-shot, k=4: four demos


def own_payload(lm_url: str, k: int) -> dict:
    payload = job_payload(lm_url, rows=20, optimizer_name="labeled_few_shot", optimizer_kwargs={"k": k})
    del payload["username"]  # the caller's
    return payload


@pytest.fixture(scope="module")
def registry(stack, local_lm) -> Registry:
    suffix = uuid.uuid4().hex[:6]
    created = stack.api.post("/users", json={"username": f"prog-alice-{suffix}"})
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    alice, mallory = stack.client(token), stack.add_user(f"prog-mallory-{suffix}")
    jobs = []
    for k in (0, 4):
        answer = alice.post("/run", json=own_payload(local_lm.url, k))
        assert answer.status_code == 201, answer.text
        jobs.append(answer.json()["job_id"])
    for job_id in jobs:
        assert stack.wait_terminal(job_id, timeout=120)["status"] == "success"
    return Registry(alice, mallory, token, *jobs)


def register(client: httpx.Client, name: str, job_id: str) -> dict:
    answer = client.post("/programs", json={"name": name, "job_id": job_id})
    assert answer.status_code == 201, answer.text
    return answer.json()


def fresh_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_versions_aliases_manifest_and_info(registry):
    alice, name = registry.alice, fresh_name("qa")
    first = register(alice, name, registry.zero_shot_job)
    second = register(alice, name, registry.few_shot_job)
    assert (first["name"], first["version"], first["job_id"]) == (name, 1, registry.zero_shot_job)
    assert second["version"] == 2 and first["created_at"]
    assert alice.put(f"/programs/{name}/aliases/production", json={"version": 1}).json() == {
        "name": name, "alias": "production", "version": 1}

    detail = alice.get(f"/programs/{name}").json()
    assert [v["version"] for v in detail["versions"]] == [1, 2] and detail["latest_version"] == 2
    assert detail["aliases"] == {"production": 1} and detail["versions"][0]["aliases"] == ["production"]
    assert all(v["optimized_test_metric"] is not None and v["optimizer_name"] == "labeled_few_shot"
               for v in detail["versions"])
    listed = {p["name"]: p for p in alice.get("/programs").json()["items"]}
    assert listed[name]["version_count"] == 2 and listed[name]["latest_version"] == 2
    assert listed[name]["aliases"] == {"production": 1}

    manifest = alice.get(f"/programs/{name}/versions/1").json()
    assert manifest["job_id"] == registry.zero_shot_job and manifest["aliases"] == ["production"]
    assert manifest["dataset"]["rows"] == 20 and len(manifest["dataset"]["sha256"]) == 64
    assert len(manifest["metric_code_sha256"]) == 64 and manifest["metrics"]["optimized_test_metric"] is not None
    assert manifest["model_config"]["name"] == "openai/local-arithmetic" and manifest["versions"]["dspy"]
    assert "program_state" not in manifest and SECRET_KEY not in json.dumps(manifest)

    production = alice.get(f"/programs/{name}/info", params={"alias": "production"}).json()
    latest = alice.get(f"/programs/{name}/info").json()
    assert (production["version"], production["demo_count"]) == (1, 0)
    assert (latest["version"], latest["demo_count"]) == (2, 4)
    assert production["input_fields"] == ["question"] and production["output_fields"] == ["answer"]

    # Move the alias: it follows; the aliased version cannot be deleted, the other can.
    assert alice.put(f"/programs/{name}/aliases/production", json={"version": 2}).status_code == 200
    assert alice.get(f"/programs/{name}/info", params={"alias": "production"}).json()["version"] == 2
    refused = alice.delete(f"/programs/{name}/versions/2")
    assert refused.status_code == 409 and "production" in refused.json()["detail"]
    assert alice.delete(f"/programs/{name}/versions/1").json() == {"name": name, "version": 1, "deleted": True}
    assert alice.get(f"/programs/{name}/versions/1").status_code == 404
    assert alice.delete(f"/programs/{name}/aliases/production").json()["deleted"] is True
    assert alice.delete(f"/programs/{name}/versions/2").status_code == 200
    assert alice.get(f"/programs/{name}").status_code == 404
    assert register(alice, name, registry.zero_shot_job)["version"] == 3  # numbers are never reused


def test_the_python_client_manages_programs(stack, registry):
    name = fresh_name("client")
    with Client(stack.stack.config.api_url, registry.alice_token) as client:
        assert client.programs.register(name, registry.zero_shot_job)["version"] == 1
        assert client.programs.register(name, registry.few_shot_job)["version"] == 2
        assert client.programs.set_alias(name, "production", 1)["version"] == 1
        assert client.programs.get(name)["aliases"] == {"production": 1}
        assert name in [p["name"] for p in client.programs.list()]
        assert client.programs.version(name, 2)["job_id"] == registry.few_shot_job
        assert client.programs.info(name, alias="production")["demo_count"] == 0
        with pytest.raises(Conflict):
            client.programs.delete_version(name, 1)
        client.programs.delete_alias(name, "production")
        assert client.programs.delete_version(name, 1)["deleted"] is True
        with pytest.raises(NotFound):
            client.programs.info(name, version=1)
        with pytest.raises(InvalidRequest) as refused:
            client.programs.register("Bad Name", registry.zero_shot_job)
        assert refused.value.field == "name"


def test_concurrent_registrations_get_distinct_numbers(registry):
    alice, name = registry.alice, fresh_name("race")
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: alice.post("/programs", json={"name": name, "job_id": registry.few_shot_job}),
                                range(4)))
    assert [a.status_code for a in answers] == [201] * 4, [a.text for a in answers]
    assert sorted(a.json()["version"] for a in answers) == [1, 2, 3, 4]
    detail = alice.get(f"/programs/{name}").json()
    assert [v["version"] for v in detail["versions"]] == [1, 2, 3, 4]
    assert all(alice.get(f"/programs/{name}/info", params={"version": v}).json()["demo_count"] == 4 for v in (1, 4))


def test_another_users_programs_are_404_on_every_route(stack, registry):
    alice, mallory, name = registry.alice, registry.mallory, fresh_name("secret")
    register(alice, name, registry.few_shot_job)
    alice.put(f"/programs/{name}/aliases/production", json={"version": 1})
    attempts = [
        mallory.get(f"/programs/{name}"),
        mallory.get(f"/programs/{name}/info"),
        mallory.get(f"/programs/{name}/info", params={"alias": "production"}),
        mallory.get(f"/programs/{name}/versions/1"),
        mallory.get(f"/programs/{name}/versions/1/export"),
        mallory.delete(f"/programs/{name}/versions/1"),
        mallory.put(f"/programs/{name}/aliases/production", json={"version": 1}),
        mallory.put(f"/programs/{name}/aliases/mine", json={"version": 1}),
        mallory.delete(f"/programs/{name}/aliases/production"),
        mallory.post("/programs", json={"name": name, "job_id": registry.few_shot_job}),  # alice's job
    ]
    assert [a.status_code for a in attempts] == [404] * len(attempts), [a.text for a in attempts]
    assert name not in json.dumps(mallory.get("/programs").json())
    assert name not in json.dumps(stack.api.get("/programs").json())  # an admin lists their own programs
    # Nothing of alice's changed.
    detail = alice.get(f"/programs/{name}").json()
    assert [v["version"] for v in detail["versions"]] == [1] and detail["aliases"] == {"production": 1}


def test_unknown_names_and_bad_input_are_404_or_4xx_naming_the_field(stack, local_lm, registry):
    alice, name = registry.alice, fresh_name("known")
    register(alice, name, registry.zero_shot_job)
    missing = [
        alice.get(f"/programs/{fresh_name('nope')}"),
        alice.get(f"/programs/{name}/versions/7"),
        alice.get(f"/programs/{name}/versions/7/export"),
        alice.get(f"/programs/{name}/info", params={"alias": "nope"}),
        alice.get(f"/programs/{name}/info", params={"version": 9}),
        alice.delete(f"/programs/{name}/aliases/nope"),
        alice.delete(f"/programs/{name}/versions/7"),
        alice.put(f"/programs/{name}/aliases/staging", json={"version": 7}),
        alice.post("/programs", json={"name": name, "job_id": str(uuid.uuid4())}),
        alice.post("/programs", json={"name": name, "job_id": "not-a-job"}),
    ]
    assert [a.status_code for a in missing] == [404] * len(missing), [a.text for a in missing]
    assert all(a.json()["detail"] for a in missing)

    def field_of(answer: httpx.Response) -> str:
        assert answer.status_code == 422, answer.text
        return answer.json()["detail"][0]["field"]

    assert field_of(alice.post("/programs", json={"name": "Not A Name", "job_id": registry.zero_shot_job})) == "name"
    assert field_of(alice.post("/programs", json={"name": "x" * 65, "job_id": registry.zero_shot_job})) == "name"
    assert field_of(alice.post("/programs", json={"job_id": registry.zero_shot_job})) == "name"
    assert field_of(alice.get("/programs/Bad%20Name")) == "name"
    assert field_of(alice.get(f"/programs/{name}/versions/zero")) == "version"
    assert field_of(alice.get(f"/programs/{name}/versions/0")) == "version"
    assert field_of(alice.put(f"/programs/{name}/aliases/Bad%20Alias", json={"version": 1})) == "alias"
    assert field_of(alice.put(f"/programs/{name}/aliases/staging", json={"version": "x"})) == "version"
    both = alice.get(f"/programs/{name}/info", params={"version": 1, "alias": "latest"})
    assert both.status_code == 400 and both.json()["field"] == "alias", both.text

    # A job that has not succeeded (still pending) gives no program.
    with stack.paused_work_pool():
        pending = alice.post("/run", json=own_payload(local_lm.url, 0)).json()["job_id"]
        refused = alice.post("/programs", json={"name": name, "job_id": pending})
        assert alice.post(f"/jobs/{pending}/cancel").status_code == 200
    assert refused.status_code == 404 and "did not succeed" in refused.json()["detail"], refused.text
    cancelled = alice.post("/programs", json={"name": name, "job_id": pending})
    assert cancelled.status_code == 404 and "did not succeed" in cancelled.json()["detail"]


def test_an_export_loads_and_runs_in_a_fresh_process_after_its_job_is_deleted(stack, local_lm, registry, tmp_path):
    alice, name = registry.alice, fresh_name("exported")
    register(alice, name, registry.zero_shot_job)
    register(alice, name, registry.few_shot_job)
    alice.put(f"/programs/{name}/aliases/production", json={"version": 2})

    # What the few-shot job's own program answers (read before its job is deleted).
    artifact = alice.get(f"/jobs/{registry.few_shot_job}/artifact").json()
    assert alice.delete(f"/jobs/{registry.few_shot_job}").status_code == 200
    assert alice.get(f"/jobs/{registry.few_shot_job}").status_code == 404
    assert alice.get(f"/programs/{name}/versions/2").json()["job_id"] == registry.few_shot_job  # its own copy

    paths = {}
    for version in (1, 2):
        answer = alice.get(f"/programs/{name}/versions/{version}/export")
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/zip"
        paths[version] = tmp_path / f"{name}-v{version}.zip"
        paths[version].write_bytes(answer.content)
    with zipfile.ZipFile(paths[2]) as archive:
        assert sorted(archive.namelist()) == ["README.md", "manifest.json", "program.json", "signature.py"]  # no pickle
        assert json.loads(archive.read("program.json")) == artifact["program_artifact"]["program_state"]
        assert archive.read("signature.py").decode() == artifact["program_source"]["signature_code"]
        assert SECRET_KEY not in archive.read("manifest.json").decode()
        assert "load_program" in archive.read("README.md").decode()

    env = {**os.environ, "DSPY_SERVICE_URL": stack.stack.config.api_url, "DSPY_SERVICE_TOKEN": registry.alice_token}
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    sources = [str(paths[1]), str(paths[2]), f"{name}@production"]
    fresh = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, local_lm.url, *sources],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    used = json.loads(fresh.stdout.strip().splitlines()[-1])
    zero_shot, few_shot, production = (used["answers"][s] for s in sources)
    assert (zero_shot["demos"], few_shot["demos"], production["demos"]) == (0, 4, 4)
    assert production["answers"] == few_shot["answers"]  # by name and alias: the same program as v2's zip
    assert zero_shot["answers"] != few_shot["answers"]  # the local LM answers better with demos
