"""Automations that end jobs whose processes vanished (created by the start command).

A job process normally reports its own final state, and when it dies its supervisor or the
worker do (deployments/runtime/). When the whole host goes (worker, wrapper and engine
at once), nobody is left to report: Prefect's documented answer is flow-run heartbeats
(PREFECT_FLOWS_HEARTBEAT_FREQUENCY, set by deployments/stack.py) plus a proactive
automation that marks a run Crashed when its heartbeats stop. These automations are
scoped to the job deployments (optimization and batch prediction), so other flows on a
shared server are untouched.

Automations react to events, which a server restart or a SQLite write storm can drop;
the API's sweep (api/stuck_jobs.py) ends stuck Pending and Cancelling runs from their
stored states as well, with the same messages.

One more automation starts the webhook delivery flow (api/webhook_flow.py) with the job id
on every terminal state of a job tagged `contract.NOTIFY_TAG`; the API's webhook sweep
(api/webhook_sweep.py) covers the events it misses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState, RunDeployment
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

from dspy_service.contract import (
    NOTIFY_TAG,
    STUCK_CANCEL_MESSAGE,
    STUCK_PENDING_MESSAGE,
    TERMINAL_STATE_TYPES,
    ZOMBIE_MESSAGE,
)
from dspy_service.settings import ServiceSettings

TERMINAL_EVENTS = frozenset(f"prefect.flow-run.{state.title()}" for state in TERMINAL_STATE_TYPES)


@dataclass(frozen=True)
class UnansweredEvent:
    """Set `state` on a run of the deployment when `after` is not followed by one of
    `expect` within `within(settings)` seconds (a proactive trigger, one bucket per run)."""

    name: str
    description: str
    after: str
    expect: frozenset[str]
    within: Callable[[ServiceSettings], float]
    state: StateType
    message: str

    def automation(self, deployment_id: UUID | Sequence[UUID], settings: ServiceSettings) -> AutomationCore:
        return AutomationCore(
            name=self.name,
            description=self.description,
            trigger=EventTrigger(
                after={self.after},
                expect=set(self.expect),
                match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
                match_related=ResourceSpecification({"prefect.resource.id": deployment_resources(deployment_id)}),
                for_each={"prefect.resource.id"},
                posture=Posture.Proactive,
                threshold=1,
                within=timedelta(seconds=self.within(settings)),
            ),
            actions=[ChangeFlowRunState(state=self.state, message=self.message)],
        )


UNANSWERED_EVENTS = (
    # The whole host went: heartbeats stop and nobody else is left to report.
    UnansweredEvent(
        name="dspy-service: crash jobs whose process stopped sending heartbeats",
        description="Marks a running dspy-service job Crashed when its flow-run heartbeats stop.",
        after="prefect.flow-run.heartbeat",
        expect=frozenset({"prefect.flow-run.heartbeat", "prefect.flow-run.Cancelling", *TERMINAL_EVENTS}),
        within=lambda settings: settings.zombie_after_seconds,
        state=StateType.CRASHED,
        message=ZOMBIE_MESSAGE,
    ),
    # Only the worker owning the process confirms a cancel; with the worker gone the run
    # would stay Cancelling, and could not be deleted.
    UnansweredEvent(
        name="dspy-service: finish cancellations nobody completed",
        description="Marks a dspy-service job Cancelled when its Cancelling state was never completed.",
        after="prefect.flow-run.Cancelling",
        expect=TERMINAL_EVENTS,
        within=lambda settings: settings.zombie_after_seconds,
        state=StateType.CANCELLED,
        message=STUCK_CANCEL_MESSAGE,
    ),
    # A worker that dies between taking a run (Pending) and starting its process leaves
    # nothing behind to report, and a Pending run holds a pool slot.
    UnansweredEvent(
        name="dspy-service: fail jobs whose worker never started them",
        description="Marks a dspy-service job Crashed when it stayed Pending (taken, never started) too long.",
        after="prefect.flow-run.Pending",
        expect=frozenset({"prefect.flow-run.Running", "prefect.flow-run.Cancelling", *TERMINAL_EVENTS}),
        within=lambda settings: settings.stuck_pending_seconds,
        state=StateType.CRASHED,
        message=STUCK_PENDING_MESSAGE,
    ),
)


def deployment_resources(deployment_id: UUID | Sequence[UUID]) -> str | list[str]:
    """The event resource id(s) of one deployment or of several (an event matches any)."""
    if isinstance(deployment_id, UUID):
        return f"prefect.deployment.{deployment_id}"
    return [f"prefect.deployment.{one}" for one in deployment_id]


DELIVERY_AUTOMATION = "dspy-service: deliver the ends of jobs to their webhooks"


def delivery_automation(deployment_id: UUID, notify_deployment_id: UUID) -> AutomationCore:
    """Run the delivery deployment with the job id on each terminal state of a job of the
    optimization deployment that carries the notify tag (one firing per event)."""
    return AutomationCore(
        name=DELIVERY_AUTOMATION,
        description="Starts the webhook delivery flow when a dspy-service job with a notify_url ends.",
        trigger=EventTrigger(
            expect=set(TERMINAL_EVENTS),
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            match_related=[
                ResourceSpecification({"prefect.resource.id": f"prefect.deployment.{deployment_id}"}),
                ResourceSpecification({"prefect.resource.id": f"prefect.tag.{NOTIFY_TAG}"}),
            ],
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            RunDeployment(
                source="selected",
                deployment_id=notify_deployment_id,
                parameters={"job_id": {"__prefect_kind": "jinja", "template": "{{ flow_run.id }}"}},
            )
        ],
    )


async def ensure_automations(
    client: PrefectClient,
    deployment_id: UUID,
    settings: ServiceSettings,
    notify_deployment_id: UUID | None = None,
    batch_deployment_id: UUID | None = None,
) -> None:
    """Create or update (by name) the automations; idempotent. The unanswered-event ones
    cover batch prediction jobs too (their runs have no notify_url to deliver)."""
    jobs = [deployment_id, batch_deployment_id] if batch_deployment_id is not None else deployment_id
    automations = [event.automation(jobs, settings) for event in UNANSWERED_EVENTS]
    if notify_deployment_id is not None:
        automations.append(delivery_automation(deployment_id, notify_deployment_id))
    for automation in automations:
        existing = await client.read_automations_by_name(automation.name)
        if existing:
            await client.update_automation(existing[0].id, automation)
            for duplicate in existing[1:]:
                await client.delete_automation(duplicate.id)
        else:
            await client.create_automation(automation)
