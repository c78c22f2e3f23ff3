"""The batch deployment is a job deployment: one settings property names them, and the
automations and the stuck-job sweep cover it (api/stuck_jobs.py, deployments/automations.py)."""

from __future__ import annotations

import uuid

from deployments.automations import UNANSWERED_EVENTS, deployment_resources
from deployments.register import BATCH_ENTRYPOINT, deployment_definition
from dspy_service.settings import ServiceSettings


def test_the_job_deployments_are_the_optimization_and_the_batch_one():
    settings = ServiceSettings(deployment="opt", batch_deployment="bat")
    assert settings.job_deployment_names == ("optimize-program/opt", "batch-predict/bat")


def test_the_batch_deployment_runs_on_the_jobs_pool():
    definition = deployment_definition(entrypoint=BATCH_ENTRYPOINT)
    assert definition["name"] == ServiceSettings().batch_deployment
    assert (
        definition["work_pool"]["name"] == ServiceSettings().work_pool
        and definition["work_pool"]["job_variables"] == {}
    )


def test_unanswered_event_automations_cover_every_job_deployment():
    first, second = uuid.uuid4(), uuid.uuid4()
    assert deployment_resources(first) == f"prefect.deployment.{first}"
    automation = UNANSWERED_EVENTS[0].automation([first, second], ServiceSettings())
    related = automation.trigger.match_related
    assert related.root["prefect.resource.id"] == [f"prefect.deployment.{first}", f"prefect.deployment.{second}"]
