"""Ownership rules and the schedule cadence quota (pure functions)."""

from __future__ import annotations

import datetime as dt

import pytest
from fastapi import HTTPException
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

from api.identity import Caller
from api.ownership import listed_username, patched_username, request_owner, run_owner, scoped_idempotency_key
from api.quotas import check_cadence, check_schedule_count, smallest_cron_gap
from dspy_service.errors import JobError
from dspy_service.schemas import JobRequest
from tests.support.payloads import job_payload

ALICE, ADMIN = Caller("alice"), Caller("root", admin=True)


def test_a_runs_owner_is_its_user_tag_else_its_payloads_username():
    assert run_owner({"tags": ["dspy-service", "user:alice"], "parameters": {"job": {"username": "x"}}}) == "alice"
    assert run_owner({"tags": [], "parameters": {"job": {"username": "bob"}}}) == "bob"  # scheduled, not started
    assert run_owner({"tags": [], "parameters": {}}) is None


def test_the_body_username_defaults_to_the_caller_and_may_name_others_for_admins_only():
    payload = job_payload("http://127.0.0.1:1")
    del payload["username"]
    assert request_owner(ALICE, JobRequest.model_validate(payload)) == "alice"
    assert request_owner(ALICE, JobRequest.model_validate({**payload, "username": "alice"})) == "alice"
    with pytest.raises(HTTPException) as refused:
        request_owner(ALICE, JobRequest.model_validate({**payload, "username": "bob"}))
    assert refused.value.status_code == 403
    assert request_owner(ADMIN, JobRequest.model_validate({**payload, "username": "bob"})) == "bob"


def test_lists_are_the_callers_own_unless_admin():
    assert listed_username(ALICE, None) == "alice"
    assert listed_username(ALICE, "alice") == "alice"
    with pytest.raises(HTTPException):
        listed_username(ALICE, "bob")
    assert listed_username(ADMIN, None) is None and listed_username(ADMIN, "bob") == "bob"


def test_a_patch_cannot_move_a_schedule_to_another_owner():
    assert patched_username(ALICE, "alice", {"seed": 1}) == {"seed": 1, "username": "alice"}
    assert patched_username(ALICE, "alice", {}) == {}
    with pytest.raises(HTTPException):
        patched_username(ALICE, "alice", {"username": "mallory"})
    with pytest.raises(JobError) as refused:
        patched_username(ADMIN, "alice", {"username": "mallory"})
    assert refused.value.field == "username"
    assert patched_username(ADMIN, "alice", {"seed": 2})["username"] == "alice"


def test_idempotency_keys_differ_per_owner():
    assert scoped_idempotency_key("alice", "k") != scoped_idempotency_key("mallory", "k")
    assert scoped_idempotency_key("alice", None) is None


def test_the_smallest_cron_gap():
    assert smallest_cron_gap("* * * * *", None) == 60
    assert smallest_cron_gap("0 3 * * *", "Europe/Berlin") >= 23 * 3600
    assert smallest_cron_gap("0,1 3 * * *", None) == 60


def test_fast_cadences_are_400_for_users_and_allowed_for_admins():
    fast = IntervalSchedule(interval=dt.timedelta(seconds=10))
    with pytest.raises(JobError) as refused:
        check_cadence(ALICE, fast, 60)
    assert refused.value.field == "interval_seconds"
    with pytest.raises(JobError) as refused:
        check_cadence(ALICE, CronSchedule(cron="*/5 * * * * *"), 60)
    assert refused.value.field == "cron"
    check_cadence(ALICE, CronSchedule(cron="*/5 * * * *"), 60)
    check_cadence(ADMIN, fast, 60)
    check_cadence(ALICE, None, 60)


def test_the_schedule_quota():
    check_schedule_count(ALICE, 1, 2)
    with pytest.raises(HTTPException) as refused:
        check_schedule_count(ALICE, 2, 2)
    assert refused.value.status_code == 429 and refused.value.headers["Retry-After"]
    check_schedule_count(ADMIN, 99, 2)
