"""The /schedules payloads: a POST /run body plus a cadence, validated before Prefect sees it."""

from __future__ import annotations

import datetime as dt

import pytest
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from pydantic import ValidationError

from api.schedule_models import SchedulePatch, ScheduleRequest, merge_job, patched_cadence
from dspy_service.contract import champion_variable
from dspy_service.errors import JobError
from tests.support.payloads import job_payload


def payload(**overrides):
    return job_payload("http://127.0.0.1:1", rows=10, **overrides)


def errors(body, model=ScheduleRequest):
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    return {error["loc"][0] if error["loc"] else "body": error["msg"] for error in info.value.errors()}


def test_interval_and_cron_become_prefect_schedules():
    request = ScheduleRequest.model_validate(payload(interval_seconds=90, name="nightly-qa"))
    schedule = request.prefect_schedule()
    assert isinstance(schedule, IntervalSchedule) and schedule.interval == dt.timedelta(seconds=90)
    assert schedule.timezone == "UTC" and request.active is True and request.name == "nightly-qa"
    request = ScheduleRequest.model_validate(payload(cron="0 3 * * 1-5", timezone="Europe/Berlin", active=False))
    schedule = request.prefect_schedule()
    assert isinstance(schedule, CronSchedule) and (schedule.cron, schedule.timezone) == ("0 3 * * 1-5", "Europe/Berlin")
    assert request.spec().optimizer_name == "bootstrap"  # the job part is a JobSpec like POST /run's


@pytest.mark.parametrize(
    "overrides, field, message",
    [
        ({}, "interval_seconds", "give `interval_seconds` or `cron`"),
        ({"cron": "0 3 * * *", "interval_seconds": 60}, "interval_seconds", "not both"),
        ({"cron": "at three"}, "cron", "Invalid cron string"),
        ({"interval_seconds": 0.5}, "interval_seconds", "greater than or equal to 1"),
        ({"interval_seconds": 2.6e16}, "interval_seconds", "less than or equal to 31622400"),
        ({"interval_seconds": 60, "timezone": "Moon/Base"}, "timezone", "Invalid timezone"),
        ({"interval_seconds": 60, "name": "two words"}, "name", "pattern"),
        ({"interval_seconds": 60, "split_fractions": {"train": 0.9, "val": 0.9}}, "split_fractions", "1.0"),
        ({"interval_seconds": 60, "dataset": None}, "dataset", "exactly one"),
    ],
)
def test_shape_errors_name_the_field(overrides, field, message):
    found = errors(payload(**overrides))
    assert field in found and message in found[field], found


def test_patch_takes_cadence_state_and_job_fields():
    patch = SchedulePatch.model_validate(
        {"active": False, "timezone": "Asia/Tokyo", "optimizer_kwargs": {"k": 2}, "not_a_field": 1}
    )
    assert patch.active is False and patch.changes_cadence
    assert patch.job_fields() == {"optimizer_kwargs": {"k": 2}}  # unknown keys ignored, as on /run
    assert SchedulePatch.model_validate({}).job_fields() == {} and not SchedulePatch().changes_cadence
    assert "interval_seconds" in errors({"cron": "0 3 * * *", "interval_seconds": 5}, SchedulePatch)


def test_merge_job_keeps_or_replaces_the_rows():
    stored = {"optimizer_name": "bootstrap", "dataset_source": None}
    ref = {"url": "/storage/datasets/x.json", "rows": 10}
    merged, keep = merge_job(stored, ref, {"optimizer_name": "miprov2"})
    assert merged["optimizer_name"] == "miprov2" and keep  # stored inline rows still apply
    merged, keep = merge_job(stored, ref, {"dataset_source": "/data/new.csv"})
    assert merged["dataset_source"] == "/data/new.csv" and not keep
    merged, keep = merge_job({**stored, "dataset_source": "/data/a.csv"}, None, {"dataset": [{"q": 1}]})
    assert merged["dataset"] == [{"q": 1}] and merged["dataset_source"] is None and not keep


def test_prefect_names_are_valid_variable_names():
    name = champion_variable("3F2504E0-4F89-11D3-9A0C-0305E82C3301")
    assert name == "dspy-champion-3f2504e0-4f89-11d3-9a0c-0305e82c3301"


def test_a_patch_keeps_what_it_does_not_name_of_the_cadence():
    nightly = CronSchedule(cron="0 3 * * *", timezone="Europe/Berlin")
    assert patched_cadence(nightly, SchedulePatch(active=False)) is None, "no cadence field: unchanged"
    moved = patched_cadence(nightly, SchedulePatch(timezone="Asia/Tokyo"))
    assert (moved.cron, moved.timezone) == ("0 3 * * *", "Asia/Tokyo")
    hourly = patched_cadence(nightly, SchedulePatch(interval_seconds=3600))
    assert hourly.interval == dt.timedelta(hours=1) and hourly.timezone == "Europe/Berlin"
    every_minute = IntervalSchedule(interval=dt.timedelta(minutes=1), timezone="UTC")
    assert patched_cadence(every_minute, SchedulePatch(timezone="Asia/Tokyo")).interval == dt.timedelta(minutes=1)
    with pytest.raises(JobError, match="not cron or interval"):
        patched_cadence(object(), SchedulePatch(timezone="Asia/Tokyo"))


def test_register_as_is_validated_naming_its_field():
    target = {"program": "nightly-qa", "alias": "production"}
    request = ScheduleRequest.model_validate(payload(interval_seconds=60, register_as=target))
    assert request.register_as is not None and request.register_as.alias == "production"
    for model in (ScheduleRequest, SchedulePatch):
        with pytest.raises(ValidationError) as info:
            model.model_validate(payload(interval_seconds=60, register_as={"program": "Nightly QA", "alias": "x"}))
        assert [e["loc"] for e in info.value.errors()] == [("register_as", "program")]
        with pytest.raises(ValidationError) as info:
            model.model_validate(payload(interval_seconds=60, register_as={"program": "qa", "alias": "-x"}))
        assert [e["loc"] for e in info.value.errors()] == [("register_as", "alias")]
    assert not SchedulePatch.model_validate({"active": False}).changes_register_as
    patch = SchedulePatch.model_validate({"register_as": None})
    assert patch.changes_register_as and patch.register_as is None
    assert "register_as" not in SchedulePatch.model_validate({"register_as": target}).job_fields()
