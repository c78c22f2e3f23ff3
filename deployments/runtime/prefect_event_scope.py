"""Which events the engine of one job may send and see: the Prefect proxy's event policy.

Pure (the standard library, contract names and prefect_scope's `JobScope`/`Decision`), no
I/O. The proxy (prefect_proxy.py) asks `event_decision` about every event the engine sends
over `/api/events/in` (Prefect's task-run recorder creates task runs from them), narrows the
engine's `/api/events/out` subscription with `own_events_filter`, and passes back only the
messages `is_own_flow_run_event` accepts. Never raises on what the engine sends: anything
malformed is a denial.
"""

from __future__ import annotations

from typing import Any

from deployments.runtime.prefect_scope import ALLOWED, FLOW_RUN, Decision, JobScope, same_id
from dspy_service.contract import champion_lock

# What else an event may be about when its related "flow-run" is this job's run.
RUN_EVENT_KINDS = ("prefect.task-run.", "prefect.artifact.", "prefect.concurrency-limit.")


def event_decision(scope: JobScope, event: Any) -> Decision:
    """May the engine send `event` (one message on /api/events/in, parsed)? Only events
    about its own flow run, or about a task run, artifact or (for a schedule) champion
    lock whose related flow run is its own; an event naming any other flow run is not.
    Reasons never quote the event (the proxy shows its name)."""
    event = event if isinstance(event, dict) else {}
    resource, related, name = event.get("resource"), event.get("related", []), event.get("event")
    entries = [resource, *related] if isinstance(related, list) else [None]
    if not isinstance(name, str) or not all(isinstance(e, dict) for e in entries):
        return Decision(False, "not an event")
    resource_id = str(resource.get("prefect.resource.id", ""))
    for entry in entries:
        entry_id = str(entry.get("prefect.resource.id", ""))
        names_run = entry_id.startswith(FLOW_RUN) or entry.get("prefect.resource.role") == "flow-run"
        if names_run and not (entry_id.startswith(FLOW_RUN) and same_id(entry_id[len(FLOW_RUN) :], scope.flow_run_id)):
            return Decision(False, "an event about another flow run")
    if resource_id.startswith(FLOW_RUN):
        return Decision(name.startswith(FLOW_RUN), ALLOWED if name.startswith(FLOW_RUN) else "not a flow-run event")
    if not any(entry.get("prefect.resource.role") == "flow-run" for entry in entries[1:]):
        return Decision(False, "an event not related to this job's flow run")
    kind = next((k for k in RUN_EVENT_KINDS if resource_id.startswith(k) and name.startswith(k)), None)
    if kind is None:
        return Decision(False, "an event about a resource that is not this job's")
    payload = event.get("payload") if isinstance(event.get("payload"), dict) else {}
    task_run = payload.get("task_run") if isinstance(payload.get("task_run"), dict) else {}
    if task_run.get("flow_run_id") is not None and not same_id(task_run["flow_run_id"], scope.flow_run_id):
        return Decision(False, "an event about another flow run's task run")
    lock = champion_lock(scope.schedule_id) if scope.schedule_id else None
    if kind == "prefect.concurrency-limit." and resource.get("prefect.resource.name") != lock:
        return Decision(False, "an event about another concurrency limit")
    return Decision(True, ALLOWED)


def own_events_filter(scope: JobScope, message: Any) -> dict[str, Any] | None:
    """The engine's /api/events/out subscription narrowed to its own flow run's events;
    None when `message` is not a subscription."""
    if not isinstance(message, dict) or message.get("type") != "filter" or not isinstance(message.get("filter"), dict):
        return None
    narrowed = {**message["filter"], "resource": {"id": [f"{FLOW_RUN}{scope.flow_run_id}"]}}
    return {**message, "filter": narrowed}


def is_own_flow_run_event(scope: JobScope, message: Any) -> bool:
    """A message of /api/events/out the engine may see: an event about its own flow run
    (messages that carry no event pass)."""
    if not isinstance(message, dict) or message.get("type") != "event":
        return isinstance(message, dict)
    event = message.get("event")
    resource = event.get("resource") if isinstance(event, dict) else None
    resource_id = str(resource.get("prefect.resource.id", "")) if isinstance(resource, dict) else ""
    return resource_id.startswith(FLOW_RUN) and same_id(resource_id[len(FLOW_RUN) :], scope.flow_run_id)
