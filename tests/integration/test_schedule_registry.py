"""A schedule with `register_as` feeds a registry alias, on a real stack (Prefect server,
scheduler, worker with the sandbox, API) with real DSPy and the local LM.

The champion gate promotes the first run (v1, the alias points to it); a run of the same
zero-shot program on the same data ties with the champion re-scored on its test split, so it
is not promoted and registers nothing; a run with four labeled demos beats it (v2, the alias
moves). The registry is read with ProgramStore against the stack's Prefect server (the
/programs routes are not on this branch).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid

import fsspec
import pytest

from dspy_service.program_store import ProgramStore, VersionEntry
from tests.integration.test_schedules import STRONG, create_schedule, run_now_and_wait, schedule_payload
from tests.support.stack import prefect_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.sqlite_only]
# Four labeled demos: the local LM's skill goes from 0.30 to 0.78 (dspy_service/testing/local_lm/task.py),
# without depending on which traces a bootstrap keeps.
FOUR_DEMOS = {"optimizer_name": "labeled_few_shot", "optimizer_kwargs": {"k": 4}}


def read_registry(stack, owner: str, program: str) -> tuple[list[VersionEntry], dict[str, int]]:
    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            store = ProgramStore(client)
            return await store.versions(owner, program), await store.aliases(owner, program)

    with prefect_settings(stack.stack):
        return asyncio.run(read())


def registry(stack, owner: str, program: str) -> tuple[dict[int, str], dict[str, int]]:
    """({version: job_id}, {alias: version}) of `program` of `owner`, as the store has them."""
    versions, aliases = read_registry(stack, owner, program)
    return {entry.version: entry.job_id for entry in versions}, aliases


def stored_document(entry: VersionEntry) -> dict:
    """The version's document file in the stack's shared storage, checked against its entry."""
    with fsspec.open(entry.document_url, "rb") as handle:
        data = handle.read()
    assert hashlib.sha256(data).hexdigest() == entry.document_sha256
    return json.loads(data)


def test_register_as_is_validated_and_kept(stack, local_lm):
    bad = schedule_payload(local_lm.url, cron="0 3 * * *", active=False,
                           register_as={"program": "Not A Name", "alias": "production"})
    response = stack.api.post("/schedules", json=bad)
    assert response.status_code == 422, response.text
    assert "register_as.program" in response.text

    target = {"program": f"kept-{uuid.uuid4().hex[:8]}", "alias": "production"}
    created = create_schedule(stack, schedule_payload(local_lm.url, cron="0 3 * * *", active=False,
                                                      register_as=target))
    schedule_id = created["schedule_id"]
    assert created["register_as"] == target
    response = stack.api.patch(f"/schedules/{schedule_id}", json={"register_as": {"program": "p", "alias": "-x"}})
    assert response.status_code == 422 and "register_as.alias" in response.text, response.text
    # PATCHing something else (Prefect 3.9 resets parameters a schedule update leaves out)
    # keeps it, a job field too; null removes it.
    assert stack.api.patch(f"/schedules/{schedule_id}", json={"name": f"n-{uuid.uuid4().hex[:6]}"}).json()[
        "register_as"] == target
    assert stack.api.patch(f"/schedules/{schedule_id}", json=STRONG).json()["register_as"] == target
    assert stack.api.get(f"/schedules/{schedule_id}").json()["register_as"] == target
    assert stack.api.patch(f"/schedules/{schedule_id}", json={"register_as": None}).json()["register_as"] is None
    assert stack.api.delete(f"/schedules/{schedule_id}").status_code == 200


def test_promoted_runs_become_versions_and_move_the_alias(stack, local_lm):
    program = f"nightly-{uuid.uuid4().hex[:8]}"
    target = {"program": program, "alias": "production"}
    created = create_schedule(stack, schedule_payload(local_lm.url, cron="0 3 * * *", active=False,
                                                      register_as=target))
    schedule_id, owner = created["schedule_id"], created["username"]

    # Run 1: the first successful run is promoted and becomes v1; the alias points to it.
    first = run_now_and_wait(stack, schedule_id)
    decision = first["result"]["details"]["champion"]
    assert decision["promoted"] is True, decision
    assert decision["registered"] == {"program": program, "version": 1, "alias": "production"}, decision
    assert registry(stack, owner, program) == ({1: first["job_id"]}, {"production": 1})
    # The job ran in its sandbox: it registered through its Prefect proxy, on the trusted side.
    assert any("in its sandbox" in e["message"] for e in stack.api.get(f"/jobs/{first['job_id']}/logs").json())

    # Run 2: the same zero-shot program ties with the champion: not promoted, nothing registered.
    second = run_now_and_wait(stack, schedule_id)
    decision = second["result"]["details"]["champion"]
    assert decision["promoted"] is False and decision["registered"] is None, decision
    assert "not promoted" in decision["registered_reason"]
    assert registry(stack, owner, program) == ({1: first["job_id"]}, {"production": 1})

    # Run 3 with 4 labeled demos beats the champion: v2, and the alias moves to it.
    assert stack.api.patch(f"/schedules/{schedule_id}", json=FOUR_DEMOS).status_code == 200
    third = run_now_and_wait(stack, schedule_id)
    decision = third["result"]["details"]["champion"]
    assert decision["promoted"] is True, decision
    assert decision["registered"] == {"program": program, "version": 2, "alias": "production"}, decision
    versions, aliases = registry(stack, owner, program)
    assert versions == {1: first["job_id"], 2: third["job_id"]} and aliases == {"production": 2}
    # The version is the run's own program, as its result holds it, owned by the schedule's owner.
    document = stored_document(read_registry(stack, owner, program)[0][-1])
    assert (document["owner"], document["job_id"], document["version"]) == (owner, third["job_id"], 2)
    assert document["program_state"] == third["result"]["program_artifact"]["program_state"]
    assert document["demo_count"] == 4 and document["optimizer_name"] == "labeled_few_shot"
    assert document["metrics"]["optimized_test_metric"] == third["result"]["optimized_test_metric"]
    assert stack.api.get(f"/schedules/{schedule_id}/champion").json()["champion"]["job_id"] == third["job_id"]
    assert stack.api.delete(f"/schedules/{schedule_id}").status_code == 200
