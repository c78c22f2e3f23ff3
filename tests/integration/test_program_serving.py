"""Serving registered programs on a real stack: two real jobs with the local LM end in two
programs (LabeledFewShot with 4 vs 1 demos), registered as v1 and v2 (POST /programs),
served by the stack's program server in sandboxed processes.

The local LM answers an arithmetic question right iff the question is easier than the
prompt's skill, which grows with the number of demos (dspy_service/testing/local_lm/task.py):
so the two versions give different, predictable answers to the same questions.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import httpx
import pytest

from dspy_service.testing.local_lm.task import attempt, parse_question
from tests.support.payloads import job_payload
from tests.support.programs import program_server

pytestmark = [pytest.mark.integration, pytest.mark.sqlite_only]

QUESTIONS = [f"What is {a} + {b}?" for a, b in [(37, 45), (12, 9), (61, 27), (5, 88), (73, 14), (28, 56),
                                                   (44, 39), (91, 7), (16, 63), (55, 22), (8, 79), (34, 47)]]


def ok(response: httpx.Response, status: int = 200) -> httpx.Response:
    assert response.status_code == status, f"{response.request.method} {response.request.url}: {response.text}"
    return response


def submit(client: httpx.Client, lm_url: str, credential: str, demos: int) -> str:
    body = job_payload(lm_url, rows=20, optimizer_name="labeled_few_shot", optimizer_kwargs={"k": demos})
    body.pop("username")
    body["model_config"] = {"name": "openai/local-arithmetic", "base_url": lm_url, "temperature": 0.0,
                            "credential": credential}
    return ok(client.post("/run", json=body), 201).json()["job_id"]


def expected_answers(document: dict) -> list[str]:
    """What the local LM answers to QUESTIONS under this version's prompt."""
    instructions = document["instructions"][0]
    return [str(attempt(parse_question(q), document["demo_count"], instructions).given) for q in QUESTIONS]


def program_server_status(stack) -> dict:
    with program_server(stack) as client:
        return ok(client.get("/v1/programs")).json()


def test_predictions_follow_the_alias_and_survive_a_killed_program_server(stack, local_lm):
    owner = f"alice-{uuid.uuid4().hex[:6]}"
    alice, bob = stack.add_user(owner), stack.add_user(f"bob-{uuid.uuid4().hex[:6]}")
    key = f"sk-serving-{uuid.uuid4().hex}"
    ok(alice.post("/credentials", json={"name": "lm", "api_key": key}), 201)
    jobs = [submit(alice, local_lm.url, "lm", demos) for demos in (4, 1)]
    for job_id in jobs:
        assert stack.wait_terminal(job_id, timeout=240)["status"] == "success"
    name = f"arith-{uuid.uuid4().hex[:6]}"
    for version, job_id in enumerate(jobs, start=1):
        registered = ok(alice.post("/programs", json={"name": name, "job_id": job_id}), 201).json()
        assert registered["version"] == version
    v1, v2 = (ok(alice.get(f"/programs/{name}/info", params={"version": v})).json() for v in (1, 2))
    expected = {1: expected_answers(v1), 2: expected_answers(v2)}
    assert (v1["demo_count"], v2["demo_count"]) == (4, 1)
    assert expected[1] != expected[2], "the two programs must answer differently (their demo counts differ)"
    ok(alice.put(f"/programs/{name}/aliases/production", json={"version": 1}))

    batch = [{"question": q} for q in QUESTIONS]
    local_lm.reset()
    first = ok(alice.post(f"/programs/{name}/predict", json={"inputs": batch, "alias": "production"})).json()
    assert (first["program"], first["version"]) == (name, 1)
    assert [o["answer"] for o in first["outputs"]] == expected[1]
    assert first["usage"]["calls"] == len(QUESTIONS) and first["usage"]["prompt_tokens"] > 0
    assert f"Bearer {key}" in local_lm.authorizations()  # the owner's credential reached the LM
    v2_answers = ok(alice.post(f"/programs/{name}/predict", json={"inputs": batch, "version": 2})).json()
    assert [o["answer"] for o in v2_answers["outputs"]] == expected[2]
    latest = ok(alice.post(f"/programs/{name}/predict", json={"inputs": batch[0]})).json()
    assert latest["version"] == 2 and latest["outputs"] == {"answer": expected[2][0]}
    assert latest["latency_ms"] > 0

    ok(alice.put(f"/programs/{name}/aliases/production", json={"version": 2}))
    moved = ok(alice.post(f"/programs/{name}/predict", json={"inputs": batch, "alias": "production"})).json()
    assert moved["version"] == 2 and [o["answer"] for o in moved["outputs"]] == expected[2]

    # Bad input, checked by the API before anything reaches the program server.
    missing = alice.post(f"/programs/{name}/predict", json={"inputs": {"query": "What is 1 + 1?"}})
    assert missing.status_code == 422 and missing.json()["detail"][0]["field"] == "inputs.question"
    assert "question" in missing.json()["detail"][0]["message"]
    assert alice.post(f"/programs/{name}/predict", json={"inputs": batch[0], "alias": "nope"}).status_code == 404
    assert alice.post(f"/programs/{name}/predict", json={"inputs": batch[0], "version": 9}).status_code == 404
    assert alice.post(f"/programs/{name}/predict", json={"inputs": [batch[0]] * 33}).status_code == 422
    # Another user's program does not exist for them.
    assert bob.post(f"/programs/{name}/predict", json={"inputs": batch[0]}).status_code == 404
    assert bob.get(f"/programs/{name}/usage").status_code == 404

    # An LM error: 502 with the provider's message, the key nowhere in it.
    local_lm.set_faults(1, status=400)
    failed = alice.post(f"/programs/{name}/predict", json={"inputs": batch[0], "version": 1})
    local_lm.set_faults(0)
    assert failed.status_code == 502 and "Injected fault 400" in failed.json()["detail"]
    assert key not in failed.text

    # The program's process killed mid-request: 503 with the reason, then a fresh one.
    loaded = {(p["name"], p["version"]): p for p in program_server_status(stack)["programs"] if p["name"] == name}
    pid = loaded[(name, 1)]["pid"]
    answers: list[httpx.Response] = []
    local_lm.set_delay(5000)
    try:
        request = threading.Thread(target=lambda: answers.append(
            alice.post(f"/programs/{name}/predict", json={"inputs": batch[0], "version": 1})))
        request.start()
        deadline = time.monotonic() + 10
        while not any(p["in_flight"] for p in program_server_status(stack)["programs"] if p["pid"] == pid):
            assert time.monotonic() < deadline, "the request never reached the program"
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        request.join(30)
    finally:
        local_lm.set_delay(0)
    assert answers[0].status_code == 503, answers[0].text
    assert answers[0].json()["detail"] == f"program server for {name} v1 exited: killed by SIGKILL"
    again = ok(alice.post(f"/programs/{name}/predict", json={"inputs": batch[0], "version": 1})).json()
    assert again["outputs"] == {"answer": expected[1][0]}
    reloaded = [p["pid"] for p in program_server_status(stack)["programs"] if (p["name"], p["version"]) == (name, 1)]
    assert reloaded and reloaded != [pid]

    usage = ok(alice.get(f"/programs/{name}/usage")).json()
    assert usage["predictions"] == 3 * len(QUESTIONS) + 2
    assert usage["versions"]["1"]["predictions"] == len(QUESTIONS) + 1
    assert usage["errors"] == 2 and usage["usage"]["calls"] >= usage["predictions"]
    logs = stack.stack.config.settings.home_dir / "logs"
    for log in ("program-server.log", "api.log"):
        assert key not in (logs / log).read_text(errors="replace"), f"the credential's key is in {log}"
