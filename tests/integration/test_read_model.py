"""The API's read model (api/run_cache.py) on a real stack: GET /jobs/{id} and /summary may
answer from it, yet a cancel, a label change or a delete made straight in Prefect (as the
Prefect UI or another API replica makes them) shows within read_model_max_age_seconds
(1 s), and the model never shows one user's job to another."""

from __future__ import annotations

import uuid

import pytest

from dspy_service import contract
from tests.support.payloads import job_payload
from tests.support.polling import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.sqlite_only]  # the read model is the API's, either database

# The rule is 1 s from the change; the margin is the last request's own time on a loaded machine.
WITHIN = 1.0 + 0.5


def read_twice(stack, job_id: str) -> dict:
    """Read the job so that the read model holds it (the second read is served from it)."""
    stack.api.get(f"/jobs/{job_id}").raise_for_status()
    response = stack.api.get(f"/jobs/{job_id}/summary")
    response.raise_for_status()
    return response.json()


def shows(stack, job_id: str, check, what: str) -> None:
    """Both GET /jobs/{id} and /summary pass `check` (a response -> bool) within WITHIN."""
    wait_until(
        lambda: all(check(stack.api.get(path.format(job_id))) for path in ("/jobs/{}", "/jobs/{}/summary")),
        WITHIN,
        0.05,
        what=what,
    )


def test_a_cancel_a_label_and_a_delete_made_in_prefect_show_within_a_second(stack, local_lm):
    from prefect.states import Cancelled

    with stack.paused_work_pool():
        job_id = stack.submit(job_payload(local_lm.url, rows=20))
        assert read_twice(stack, job_id)["status"] == "pending"
        with stack.prefect_client() as client:
            client.set_flow_run_state(uuid.UUID(job_id), Cancelled(message="cancelled in the UI"), force=True)
        shows(stack, job_id, lambda r: r.json()["status"] == "cancelled", "the cancel made in Prefect")

    assert read_twice(stack, job_id)["termination_reason"] is None
    # A label PATCH emits no event: the reconcile (or the entry's age) brings it.
    labels = {contract.TERMINATION_REASON: "budget_exhausted"}
    assert stack.prefect.patch(f"/flow_runs/{job_id}/labels", json=labels).status_code == 204
    summary = wait_until(
        lambda: (s := stack.api.get(f"/jobs/{job_id}/summary").json())["termination_reason"] and s,
        WITHIN,
        0.05,
        what="the label set in Prefect",
    )
    assert summary["termination_reason"] == "budget_exhausted"

    read_twice(stack, job_id)
    # A delete emits no event either.
    assert stack.prefect.delete(f"/flow_runs/{job_id}").status_code == 204
    shows(stack, job_id, lambda r: r.status_code == 404, "the delete made in Prefect")


def test_a_kept_job_is_still_only_its_owners(stack, local_lm):
    alice = stack.add_user(f"alice-{uuid.uuid4().hex[:8]}")
    mallory = stack.add_user(f"mallory-{uuid.uuid4().hex[:8]}")
    with stack.paused_work_pool():
        payload = job_payload(local_lm.url, rows=20)
        del payload["username"]  # the caller's
        response = alice.post("/run", json=payload)
        assert response.status_code == 201, response.text
        job_id = response.json()["job_id"]
        for _ in range(3):  # held by the read model from the first read on
            assert alice.get(f"/jobs/{job_id}/summary").status_code == 200
            for path in ("/jobs/{}", "/jobs/{}/summary"):
                assert mallory.get(path.format(job_id)).status_code == 404
        assert alice.post(f"/jobs/{job_id}/cancel").status_code == 200
        # This replica's own cancel shows at once.
        assert alice.get(f"/jobs/{job_id}/summary").json()["status"] == "cancelled"


def test_a_list_page_shows_this_replicas_new_job_at_once_and_changes_made_in_prefect_within_a_second(stack, local_lm):
    alice = stack.add_user(f"alice-{uuid.uuid4().hex[:8]}")

    def listed() -> dict[str, str]:
        page = alice.get("/jobs", params={"limit": 50})
        page.raise_for_status()
        return {job["job_id"]: job["status"] for job in page.json()["items"]}

    payload = job_payload(local_lm.url, rows=20)
    del payload["username"]  # the caller's
    with stack.paused_work_pool():
        first = alice.post("/run", json=payload).json()["job_id"]
        assert listed() == listed() == {first: "pending"}  # the second may be the kept page
        second = alice.post("/run", json={**payload, "seed": 7}).json()["job_id"]
        assert listed() == {first: "pending", second: "pending"}, "this replica's new job, at once"

        from prefect.states import Cancelled

        with stack.prefect_client() as client:  # as the Prefect UI does it: an event follows
            client.set_flow_run_state(uuid.UUID(first), Cancelled(message="cancelled in the UI"), force=True)
        wait_until(lambda: listed().get(first) == "cancelled", WITHIN, 0.05, what="the cancel made in Prefect")
        assert stack.prefect.delete(f"/flow_runs/{first}").status_code == 204  # no event: the page's age
        wait_until(lambda: first not in listed(), WITHIN, 0.05, what="the delete made in Prefect")
        assert alice.post(f"/jobs/{second}/cancel").status_code == 200
        assert listed() == {second: "cancelled"}, "this replica's cancel, at once"


def test_pages_cut_from_the_list_index_show_changes_made_in_prefect_within_a_second(stack, local_lm):
    """Once the API's list index serves pages (api/run_index.py), each change Prefect makes
    without this replica shows within 1 s: a state change (an event), a label PATCH on a
    running job and a delete (no event), and one user's page never holds another's job."""
    from prefect.states import Cancelled, Running

    alice = stack.add_user(f"alice-{uuid.uuid4().hex[:8]}")
    mallory = stack.add_user(f"mallory-{uuid.uuid4().hex[:8]}")

    def listed(user=alice) -> dict[str, dict]:
        page = user.get("/jobs", params={"limit": 50})
        page.raise_for_status()
        return {job["job_id"]: job for job in page.json()["items"]}

    def serving() -> bool:
        listed()  # pages asked for keep the index current
        return alice.get("/queue").json()["list_index"]["serving"]

    payload = job_payload(local_lm.url, rows=20)
    del payload["username"]  # the caller's
    with stack.paused_work_pool():
        first = alice.post("/run", json=payload).json()["job_id"]
        second = alice.post("/run", json={**payload, "seed": 7}).json()["job_id"]
        wait_until(serving, 30, 0.1, what="the list index to serve pages")
        assert listed().keys() == {first, second}
        assert listed(mallory) == {}, "another user's page holds none of alice's jobs"

        with stack.prefect_client() as client:  # as the Prefect UI or another replica would
            client.set_flow_run_state(uuid.UUID(first), Cancelled(message="cancelled in the UI"), force=True)
            cancelled = lambda: listed()[first]["status"] == "cancelled"  # noqa: E731
            wait_until(cancelled, WITHIN, 0.05, what="the cancel made in Prefect")
            # A running job's labels change with no event (the engine's progress, metrics).
            client.set_flow_run_state(uuid.UUID(second), Running(), force=True)
            wait_until(lambda: listed()[second]["status"] != "pending", WITHIN, 0.05, what="the run's start")
            labels = {contract.TERMINATION_REASON: "budget_exhausted"}
            assert stack.prefect.patch(f"/flow_runs/{second}/labels", json=labels).status_code == 204
            wait_until(
                lambda: listed()[second]["termination_reason"] == "budget_exhausted",
                WITHIN, 0.05, what="a running job's label set in Prefect",
            )
            client.set_flow_run_state(uuid.UUID(second), Cancelled(message="done"), force=True)
        assert stack.prefect.delete(f"/flow_runs/{first}").status_code == 204  # no event either
        wait_until(lambda: first not in listed(), WITHIN, 0.05, what="the delete made in Prefect")
        assert alice.get("/jobs", params={"limit": 50}).json()["total"] == 1
        assert serving(), "the pages above came from the list index"
