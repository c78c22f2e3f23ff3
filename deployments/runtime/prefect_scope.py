"""What the engine of one job may ask of the Prefect API: the job-scoped proxy's policy.

Pure: the standard library and dspy_service.contract (names), no I/O. The proxy
(prefect_proxy.py) asks `decide` about every request before it forwards it and tells
`JobObjects` what the upstream created for the job (the ids later requests may name); the
events it relays are prefect_event_scope.py's business.

The allow-list (`ROUTES`) is what engines of real jobs were seen to call through a logging
pass-through, plus creating and reading their own task runs: its own run (read, PATCH of
its version and retry policy, set state, labels), its deployment, flow, work pool and
queue, harmless server reads, its logs, its artifacts (keys `job-<12 hex of its id>-`),
the event websockets, a filter of runs bounded to its own run's id (the engine's cancel and
suspend watches poll that way when their websocket drops); for runs of a schedule only,
the champion gate's Variable (naming this job), lock (leases it took) and the proxy's
champion-result route, and, while it holds a lease of that lock, the proxy's
champion-registration route (the trusted side decides what is registered). Everything
else is denied: other runs, other filters, creating runs, blocks (Secrets), deletes.

How it fails: never raises on what the engine sends; anything malformed (a path outside
/api, odd characters or `..`, a body that is not JSON or repeats a key) is a denial whose
reason says why. Reasons are short and user-readable; the proxy shows them in the job's log.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dspy_service.contract import (
    CHAMPION_REGISTRATION_ROUTE,
    CHAMPION_RESULT_ROUTE,
    artifact_key_prefix,
    champion_lock,
    champion_variable,
)

API_ROOT = "/api"
SEGMENT = re.compile(r"^[A-Za-z0-9_.~-]+$")
FLOW_RUN = "prefect.flow-run."
ALLOWED = "allowed"


@dataclass(frozen=True)
class JobScope:
    """The one flow run a job's engine runs, and what belongs to it."""

    flow_run_id: str
    deployment_id: str | None
    flow_id: str | None
    schedule_id: str | None  # runs of a schedule only: the champion gate's names derive from it
    work_pool_name: str | None = None
    work_queue_id: str | None = None

    @classmethod
    def of_flow_run(cls, run: Mapping[str, Any]) -> JobScope:
        """The scope of a flow run given as the Prefect API's JSON (read by the trusted
        supervisor before the engine starts; the engine cannot change its parameters)."""
        parameters = run.get("parameters")
        schedule = parameters.get("schedule_id") if isinstance(parameters, Mapping) else None
        ids = {name: str(run[name]) if run.get(name) else None for name in cls.__dataclass_fields__}
        ids.update(flow_run_id=str(run["id"]), schedule_id=schedule if isinstance(schedule, str) else None)
        return cls(**ids)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str  # user-readable: why it was denied, or what the allowed call is


@dataclass
class JobObjects:
    """Ids of what the upstream created for this job through the proxy (and task runs its
    events created): later requests may name only these."""

    artifacts: set[str] = field(default_factory=set)
    task_runs: set[str] = field(default_factory=set)
    leases: set[str] = field(default_factory=set)

    def remember(self, method: str, path: str, status: int, response: bytes, body: bytes | None = None) -> None:
        """Record the id a successful create returned; forget a lease once it was released
        (`body`: the request's). A no-op for any other request."""
        parts = split_path(path)
        route = next((r for r in ROUTES if r.method == method and parts is not None and shape_of(r, parts)), None)
        if route is not None and route.body is held_lease and 200 <= status < 300:
            with contextlib.suppress(ValueError, AttributeError, RecursionError):
                self.leases.discard(str(parse_id(strict_json(body).get("lease_id"))))
            return
        if route is None or route.creates is None or not 200 <= status < 300:
            return
        kind, key = route.creates
        try:
            created = json.loads(response).get(key)
        except (ValueError, AttributeError):
            created = None
        if isinstance(created, str) and parse_id(created):
            getattr(self, kind).add(str(parse_id(created)))

    def remember_event(self, event: Mapping[str, Any]) -> None:
        """An allowed `prefect.task-run.*` event creates (or updates) that task run."""
        kind, _, task_run = str(event["resource"]["prefect.resource.id"]).rpartition(".")
        if kind == "prefect.task-run" and parse_id(task_run):
            self.task_runs.add(str(parse_id(task_run)))


def parse_id(text: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(text))
    except ValueError:
        return None


def same_id(text: Any, own: str | None) -> bool:
    return own is not None and text is not None and parse_id(text) in {parse_id(own)} - {None}


def split_path(path: str) -> list[str] | None:
    """The segments under /api (one trailing slash ignored); None for anything else."""
    if not path.startswith(API_ROOT + "/"):
        return None
    parts = path[len(API_ROOT) + 1 :].removesuffix("/").split("/")
    if any(not SEGMENT.match(part) or part in {".", ".."} for part in parts):
        return None
    return parts


def no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({key for key, _ in pairs}) != len(pairs):
        raise ValueError("repeated key")
    return dict(pairs)


def strict_json(body: bytes | None) -> Any:
    """The body as JSON; ValueError if it is not JSON or an object repeats a key (the
    server would read the last one, the check could have read another)."""
    return json.loads(body or b"null", object_pairs_hook=no_repeated_keys)


# -- body checks: each returns a denial reason, or None -------------------------------------
BodyCheck = Callable[[JobScope, "JobObjects", Any], "str | None"]


def only_keys(*keys: str) -> BodyCheck:
    def check(scope: JobScope, objects: JobObjects, body: Any) -> str | None:
        ok = isinstance(body, dict) and not set(body) - set(keys)
        return None if ok else f"only {', '.join(keys)} may be changed here"

    return check


def json_object(scope: JobScope, objects: JobObjects, body: Any) -> str | None:
    return None if isinstance(body, dict) else "the body must be a JSON object"


def own_run_state(scope: JobScope, objects: JobObjects, body: Any) -> str | None:
    state = body.get("state") if isinstance(body, dict) else None
    details = state.get("state_details") if isinstance(state, dict) else None
    if not isinstance(state, dict) or not isinstance(details or {}, dict):
        return "the body must hold a state"
    named = (details or {}).get("flow_run_id")
    return None if named is None or same_id(named, scope.flow_run_id) else "a state naming another flow run"


def in_own_run(scope: JobScope, objects: JobObjects, body: Any) -> str | None:
    named = body.get("flow_run_id") if isinstance(body, dict) else None
    return None if same_id(named, scope.flow_run_id) else "not this job's flow run"


def own_run_filter(scope: JobScope, objects: JobObjects, body: Any) -> str | None:
    """The engine's cancel and suspend watches poll their own run by id when their event
    stream drops (a filter's parts AND together: an id filter bounds the whole answer)."""
    runs = body.get("flow_runs") if isinstance(body, dict) else None
    ids = runs.get("id") if isinstance(runs, dict) else None
    ids = ids.get("any_") if isinstance(ids, dict) else None
    if isinstance(ids, list) and ids and all(same_id(i, scope.flow_run_id) for i in ids):
        return None
    return "a job cannot list or filter runs or other objects, only its own run by id"


def own_logs(scope: JobScope, objects: JobObjects, body: Any) -> str | None:
    if not isinstance(body, list) or not all(isinstance(entry, dict) for entry in body):
        return "the body must be a list of log entries"
    ok = all(same_id(entry.get("flow_run_id"), scope.flow_run_id) for entry in body)
    return None if ok else "log entries of another flow run"


def own_artifact(scope: JobScope, objects: JobObjects, body: Any) -> str | None:
    if (denied := in_own_run(scope, objects, body)) is not None:
        return denied
    key, prefix = body.get("key"), artifact_key_prefix(scope.flow_run_id)
    return None if key is None or (isinstance(key, str) and key.startswith(prefix)) else f"artifact keys start {prefix}"


def champion_pointer(require_name: bool) -> BodyCheck:
    """Creating (the name required) or updating the champion Variable, with a value that
    names this job: the only champion its gate ever records (tasks/champion.py)."""

    def check(scope: JobScope, objects: JobObjects, body: Any) -> str | None:
        own = champion_variable(scope.schedule_id or "")
        if not isinstance(body, dict) or body.get("name", None if require_name else own) != own:
            return "not this schedule's champion variable"
        value = body.get("value")
        ok = isinstance(value, dict) and same_id(value.get("job_id"), scope.flow_run_id)
        return None if ok else "the champion may only name this job"

    return check


def champion_lock_only(scope: JobScope, objects: JobObjects, body: Any) -> str | None:
    names = body.get("names") if isinstance(body, dict) else None
    return None if names == [champion_lock(scope.schedule_id or "")] else "not this schedule's champion lock"


def inside_champion_gate(scope: JobScope, objects: JobObjects, body: Any) -> str | None:
    """Registration happens in the champion gate, under the champion lock: the job must
    hold a lease of it (taken through this proxy) and send its program as an object."""
    if not objects.leases:
        return "only inside the champion gate, holding the champion lock"
    return None if isinstance(body, dict) else "the body must be a JSON object"


def held_lease(scope: JobScope, objects: JobObjects, body: Any) -> str | None:
    lease = parse_id(body.get("lease_id")) if isinstance(body, dict) else None
    return None if lease is not None and str(lease) in objects.leases else "not a lease this job holds"


# -- the allow-list ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    method: str
    template: tuple[str, ...]  # literal segments and {placeholders} (see PLACEHOLDERS)
    what: str
    body: BodyCheck | None = None  # None: no body is looked at
    schedule_only: bool = False
    any_query: bool = False
    websocket: bool = False
    creates: tuple[str, str] | None = None  # (JobObjects set, id key of the response)


def route(method: str, path: str, what: str, **options: Any) -> Route:
    return Route(method, tuple(path.strip("/").split("/")), what, **options)


ROUTES: tuple[Route, ...] = (
    route("GET", "health", "server health"),
    route("GET", "admin/version", "the server's version"),
    route("GET", "admin/storage", "the server's default result storage"),
    route("GET", "csrf-token", "a CSRF token", any_query=True),
    route("POST", "flow_runs/filter", "poll this job's own run by id", body=own_run_filter),
    route("GET", "flow_runs/{run}", "read this job's flow run"),
    route("PATCH", "flow_runs/{run}", "the engine's flow version and retry policy",
          body=only_keys("flow_version", "empirical_policy")),
    route("POST", "flow_runs/{run}/set_state", "set this job's state", body=own_run_state),
    route("PATCH", "flow_runs/{run}/labels", "this job's labels", body=json_object),
    route("GET", "deployments/{deployment}", "read this job's deployment"),
    route("GET", "flows/{flow}", "read this job's flow"),
    route("GET", "work_pools/{pool}", "read this job's work pool"),
    route("GET", "work_queues/{queue}", "read this job's work queue"),
    route("POST", "task_runs", "create a task run of this job", body=in_own_run, creates=("task_runs", "id")),
    route("GET", "task_runs/{task_run}", "read a task run of this job"),
    route("POST", "task_runs/{task_run}/set_state", "set a task run's state", body=json_object),
    route("POST", "logs", "this job's logs", body=own_logs),
    route("POST", "artifacts", "create an artifact of this job", body=own_artifact, creates=("artifacts", "id")),
    route("PATCH", "artifacts/{artifact}", "update an artifact of this job",
          body=only_keys("data", "description", "metadata_")),
    route("GET", "events/in", "send events about this job", websocket=True),
    route("GET", "events/out", "follow this job's flow-run events", websocket=True),
    route("GET", "variables/name/{variable}", "read the champion", schedule_only=True),
    route("POST", "variables", "record the first champion", body=champion_pointer(True), schedule_only=True),
    route("PATCH", "variables/name/{variable}", "a new champion", body=champion_pointer(False), schedule_only=True),
    route("POST", "v2/concurrency_limits/increment-with-lease", "take the champion lock", body=champion_lock_only,
          schedule_only=True, creates=("leases", "lease_id")),
    route("POST", "v2/concurrency_limits/leases/{lease}/renew", "keep the champion lock", schedule_only=True),
    route("POST", "v2/concurrency_limits/decrement-with-lease", "release it", body=held_lease, schedule_only=True),
    route("GET", CHAMPION_RESULT_ROUTE, "the champion's run and result (the proxy's own)", schedule_only=True),
    route("POST", CHAMPION_REGISTRATION_ROUTE, "register this promoted run (the proxy's own)",
          body=inside_champion_gate, schedule_only=True),
)

# placeholder -> (does the segment belong to this job?, the reason when it does not)
PLACEHOLDERS: dict[str, tuple[Callable[[JobScope, JobObjects, str], bool], str]] = {
    "{run}": (lambda s, o, seg: same_id(seg, s.flow_run_id), "not this job's flow run"),
    "{deployment}": (lambda s, o, seg: same_id(seg, s.deployment_id), "not this job's deployment"),
    "{flow}": (lambda s, o, seg: same_id(seg, s.flow_id), "not this job's flow"),
    "{pool}": (lambda s, o, seg: seg == s.work_pool_name, "not this job's work pool"),
    "{queue}": (lambda s, o, seg: same_id(seg, s.work_queue_id), "not this job's work queue"),
    "{task_run}": (lambda s, o, seg: str(parse_id(seg)) in o.task_runs, "not a task run of this job"),
    "{artifact}": (lambda s, o, seg: str(parse_id(seg)) in o.artifacts, "not an artifact of this job"),
    "{lease}": (lambda s, o, seg: str(parse_id(seg)) in o.leases, "not a lease this job holds"),
    "{variable}": (
        lambda s, o, seg: s.schedule_id is not None and seg == champion_variable(s.schedule_id),
        "not this schedule's champion variable",
    ),
}


def shape_of(candidate: Route, parts: list[str]) -> bool:
    return len(candidate.template) == len(parts) and all(
        t == p or t in PLACEHOLDERS for t, p in zip(candidate.template, parts, strict=True)
    )


def placeholder_denial(candidate: Route, parts: list[str], scope: JobScope, objects: JobObjects) -> str | None:
    for token, part in zip(candidate.template, parts, strict=True):
        if token in PLACEHOLDERS:
            belongs, reason = PLACEHOLDERS[token]
            if not belongs(scope, objects, part):
                return reason
    return None


def route_denial(
    candidate: Route, parts: list[str], scope: JobScope, objects: JobObjects, query: str, body: bytes | None
) -> str | None:
    if candidate.schedule_only and scope.schedule_id is None:
        return "only a run of a schedule may use the champion's Variable, lock and result"
    if (denied := placeholder_denial(candidate, parts, scope, objects)) is not None:
        return denied
    if query and not candidate.any_query:
        return "query parameters are not allowed here"
    if candidate.body is None:
        return None
    try:
        parsed = strict_json(body)
    except (ValueError, RecursionError):
        return "the body is not JSON (or repeats a key)"
    return candidate.body(scope, objects, parsed)


def known_denial(method: str, parts: list[str], scope: JobScope) -> str | None:
    """The reason for calls a hostile job tries, worded for the job's log."""
    if parts[0].startswith("block"):
        return "blocks (Secrets, credentials) are not readable from a job"
    if method == "DELETE":
        return "a job cannot delete anything"
    if parts[-1] == "create_flow_run" or (parts == ["flow_runs"] and method == "POST"):
        return "a job cannot create flow runs"
    if parts[-1] in {"filter", "count", "paginate", "history"}:
        return "a job cannot list or filter runs or other objects"
    if parts[0] == "flow_runs" and not same_id(parts[1] if len(parts) > 1 else None, scope.flow_run_id):
        return "not this job's flow run"
    if parts[0] == "variables":
        return "not this schedule's champion variable"
    if parts[0] in {"concurrency_limits", "v2"}:
        return "not this schedule's champion lock"
    return None


def decide(
    scope: JobScope,
    method: str,
    path: str,
    query: str,
    body: bytes | None,
    objects: JobObjects | None = None,
    *,
    websocket: bool = False,
) -> Decision:
    """May the engine of `scope` make this request? `path` is the raw path it sent
    (`/api/...`), `objects` what it created so far, `websocket` an upgrade request."""
    objects = objects if objects is not None else JobObjects()
    parts = split_path(path)
    if parts is None:
        return Decision(False, "not a Prefect API path")
    shaped = [r for r in ROUTES if shape_of(r, parts)]
    for candidate in (r for r in shaped if r.method == method.upper() and r.websocket == websocket):
        denied = route_denial(candidate, parts, scope, objects, query, body)
        return Decision(denied is None, denied or candidate.what)
    if any(r.websocket != websocket for r in shaped):
        return Decision(False, "only over a websocket" if not websocket else "not a websocket route")
    reason = known_denial(method.upper(), parts, scope)
    if reason is None and shaped:
        reason = placeholder_denial(shaped[0], parts, scope, objects)
    return Decision(False, reason or "not needed by a job's engine")
