"""Automations that end jobs whose processes vanished (created by the start command).

A job process normally reports its own final state, and when it dies the wrapper or the
worker do (deployments/runtime/). When the whole host goes (worker, wrapper and engine
at once), nobody is left to report: Prefect's documented answer is flow-run heartbeats
(PREFECT_FLOWS_HEARTBEAT_FREQUENCY, set by deployments/stack.py) plus a proactive
automation that marks a run Crashed when its heartbeats stop. These automations are
scoped to the optimization deployment, so other flows on a shared server are untouched.

Automations react to events, which a server restart or a SQLite write storm can drop;
the API's sweep (api/stuck_jobs.py) ends stuck Pending and Cancelling runs from their
stored states as well, with the same messages.
"""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

from dspy_service.contract import STUCK_CANCEL_MESSAGE, STUCK_PENDING_MESSAGE, TERMINAL_STATE_TYPES, ZOMBIE_MESSAGE
from dspy_service.settings import ServiceSettings

ZOMBIE_AUTOMATION = "dspy-service: crash jobs whose process stopped sending heartbeats"
STUCK_CANCEL_AUTOMATION = "dspy-service: finish cancellations nobody completed"
STUCK_PENDING_AUTOMATION = "dspy-service: fail jobs whose worker never started them"
TERMINAL_EVENTS = {f"prefect.flow-run.{state.title()}" for state in TERMINAL_STATE_TYPES}



def unanswered_event_automation(
    deployment_id: UUID,
    *,
    name: str,
    description: str,
    after: str,
    expect: set[str],
    within_seconds: float,
    state: StateType,
    message: str,
) -> AutomationCore:
    """Set `state` on a run of the deployment when `after` is not followed by one of
    `expect` within `within_seconds` (a proactive trigger, one bucket per flow run)."""
    return AutomationCore(
        name=name,
        description=description,
        trigger=EventTrigger(
            after={after},
            expect=expect,
            match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
            match_related=ResourceSpecification({"prefect.resource.id": f"prefect.deployment.{deployment_id}"}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_seconds),
        ),
        actions=[ChangeFlowRunState(state=state, message=message)],
    )


def zombie_automation(deployment_id: UUID, settings: ServiceSettings) -> AutomationCore:
    return unanswered_event_automation(
        deployment_id,
        name=ZOMBIE_AUTOMATION,
        description="Marks a running dspy-service job Crashed when its flow-run heartbeats stop.",
        after="prefect.flow-run.heartbeat",
        expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Cancelling", *TERMINAL_EVENTS},
        within_seconds=settings.zombie_after_seconds,
        state=StateType.CRASHED,
        message=ZOMBIE_MESSAGE,
    )


def stuck_cancel_automation(deployment_id: UUID, settings: ServiceSettings) -> AutomationCore:
    """A run cancelled while its worker was gone stays Cancelling (only the worker that
    owns the process confirms it); confirm it after a while so it can be deleted."""
    return unanswered_event_automation(
        deployment_id,
        name=STUCK_CANCEL_AUTOMATION,
        description="Marks a dspy-service job Cancelled when its Cancelling state was never completed.",
        after="prefect.flow-run.Cancelling",
        expect=TERMINAL_EVENTS,
        within_seconds=settings.zombie_after_seconds,
        state=StateType.CANCELLED,
        message=STUCK_CANCEL_MESSAGE,
    )


def stuck_pending_automation(deployment_id: UUID, settings: ServiceSettings) -> AutomationCore:
    """A worker that dies between taking a run (Pending) and starting its process leaves
    nothing behind to report, and a Pending run holds a pool slot."""
    return unanswered_event_automation(
        deployment_id,
        name=STUCK_PENDING_AUTOMATION,
        description="Marks a dspy-service job Crashed when it stayed Pending (taken, never started) too long.",
        after="prefect.flow-run.Pending",
        expect={"prefect.flow-run.Running", "prefect.flow-run.Cancelling", *TERMINAL_EVENTS},
        within_seconds=settings.stuck_pending_seconds,
        state=StateType.CRASHED,
        message=STUCK_PENDING_MESSAGE,
    )


async def ensure_automations(client: PrefectClient, deployment_id: UUID, settings: ServiceSettings) -> None:
    """Create or update (by name) the automations; idempotent."""
    automations = (
        zombie_automation(deployment_id, settings),
        stuck_cancel_automation(deployment_id, settings),
        stuck_pending_automation(deployment_id, settings),
    )
    for automation in automations:
        existing = await client.read_automations_by_name(automation.name)
        if existing:
            await client.update_automation(existing[0].id, automation)
            for duplicate in existing[1:]:
                await client.delete_automation(duplicate.id)
        else:
            await client.create_automation(automation)
