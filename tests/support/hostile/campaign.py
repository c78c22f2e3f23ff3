"""One hostile tenant against one victim on a real stack: plant the victim's canaries, run
the attacker's jobs beside the victim's, collect what each of them can read back.

`run_campaign` is the whole scenario (a few minutes; jobs run two at a time):

1. The victim (a user of their own) stores a credential whose key is a canary, and owns:
   `finished`, a job that succeeded, with a canary in every dataset row (an unmapped
   column) and in its signature's docstring (hence in its parameters, result and prompt);
   `pending` and `pending_too`, jobs scheduled far ahead that no worker takes (what the
   attacker cancels through Prefect and through our API); `cancelled` and
   `cancelled_too`, jobs cancelled before they ran (what the attacker deletes, both
   ways); and `running`, a job that sleeps 45 s in its code and then succeeds, running
   while the attacks and the bombs run.
2. Once `running` is running (a job's process can take seconds to start, more under load:
   submitted together, a bomb could start and end before it), the attacker (another user)
   submits, in this order: a fork bomb and a memory bomb (so both run beside `running`); the
   `prefect` attack (metric_code: the
   Prefect API, our API, the network) and the `local` attack (signature_code: files,
   processes, the database), see attacks.py; then their own ordinary BootstrapFewShot,
   MIPROv2 and GEPA jobs.
3. It waits until every job is terminal and returns a `Campaign`.

The Prefect server's environment (worker, API, server) holds the canary `CANARY_ENV`
(the stack fixture sets it). Waits that time out raise AssertionError naming the job.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from deployments.runtime.lm_cache_server import store_path
from dspy_service.contract import user_variable
from dspy_service.storage import DATASETS_DIR
from dspy_service.testing.local_lm import ARITHMETIC_METRIC_CODE, ARITHMETIC_SIGNATURE_CODE
from tests.support.payloads import job_payload, light_optimizer_payload
from tests.support.reliability import FORK_BOMB, MEMORY_BOMB
from tests.support.result_storage import stored_result_path
from tests.support.stack import RunningStack

CANARY_ENV = "HOSTILE_TENANT_CANARY"  # in the environment of the stack's processes
ATTACKS = Path(__file__).with_name("attacks.py")
REPORT_PREFIX = "hostile-report "  # attacks.py's log lines
FAR_FUTURE = "2999-01-01T00:00:00Z"
VICTIM_SLEEP_SECONDS = 45  # `running` outlasts both bombs, which start after it (one job slot)
ATTACK_JOBS = ("prefect", "local")
PENDING = ("pending", "pending_too")  # the victim's jobs scheduled far ahead
CANCELLED = ("cancelled", "cancelled_too")
BOMBS = ("fork_bomb", "memory_bomb")
ORDINARY = ("bootstrap", "miprov2", "gepa")


@dataclass(frozen=True)
class Canaries:
    """Random strings only the victim's objects (and the stack's environment) hold; the
    attacks look for the shape `hostile-canary-<kind>-<32 hex>`."""

    code: str
    row: str
    key: str
    env: str

    @classmethod
    def fresh(cls) -> Canaries:
        return cls(*(f"hostile-canary-{kind}-{uuid.uuid4().hex}" for kind in ("code", "row", "key", "env")))

    def values(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class Tenant:
    name: str
    client: httpx.Client
    jobs: dict[str, str] = field(default_factory=dict)  # role -> job id


@dataclass
class Campaign:
    stack: RunningStack
    canaries: Canaries
    victim: Tenant
    attacker: Tenant
    victim_result: Path  # the result file of the victim's `finished` job
    victim_result_bytes: bytes  # ... as it was before the attacks
    variables_before: dict[str, Any]  # every Prefect Variable (name -> value) before the attacks
    targets: dict[str, dict] = field(default_factory=dict)  # attack job role -> what it was told
    summaries: dict[str, dict] = field(default_factory=dict)  # job id -> terminal summary

    def summary(self, tenant: Tenant, role: str) -> dict:
        return self.summaries[tenant.jobs[role]]

    @property
    def job_ids(self) -> set[str]:
        return {*self.victim.jobs.values(), *self.attacker.jobs.values()}

    def timeline(self) -> str:
        """One line per finished job, in start order: who, what, status, when (for failures)."""
        rows = [(s["started_at"] or "", tenant.name, role, s["status"], s["completed_at"])
                for tenant in (self.victim, self.attacker) for role, job_id in tenant.jobs.items()
                if (s := self.summaries.get(job_id))]
        return "\n".join(" ".join(map(str, row)) for row in sorted(rows))

    def logs(self, role: str) -> list[dict]:
        answer = self.attacker.client.get(f"/jobs/{self.attacker.jobs[role]}/logs")
        assert answer.status_code == 200, answer.text
        return answer.json()

    def reports(self, role: str) -> dict[str, dict]:
        """attempt name -> {attempt, got, detail, found}, from the attack job's log lines."""
        lines = [e["message"] for e in self.logs(role) if e["message"].startswith(REPORT_PREFIX)]
        return {entry["attempt"]: entry for entry in (json.loads(line[len(REPORT_PREFIX) :]) for line in lines)}

    def attacker_readback(self) -> str:
        """Everything the attacker can read back about their jobs through our API."""
        client = self.attacker.client
        texts = [client.get("/jobs", params={"limit": 500}).text]
        for job_id in self.attacker.jobs.values():
            texts += [client.get(f"/jobs/{job_id}{path}").text for path in ("", "/summary", "/logs", "/artifact")]
        return "\n".join(texts)


def prefect_ok(stack: RunningStack, method: str, path: str, **kwargs) -> httpx.Response:
    response = stack.prefect.request(method, path, **kwargs)
    assert response.is_success, f"{method} {path}: {response.status_code} {response.text}"
    return response


def all_variables(stack: RunningStack) -> dict[str, Any]:
    answer = prefect_ok(stack, "POST", "/variables/filter", json={"limit": 200}).json()
    return {variable["name"]: variable["value"] for variable in answer}


def all_flow_run_ids(stack: RunningStack) -> set[str]:
    return {run["id"] for run in prefect_ok(stack, "POST", "/flow_runs/filter", json={"limit": 200}).json()}


def own_job(lm_url: str, **overrides: Any) -> dict[str, Any]:
    """A quick job body of the caller's own (labeled few-shot, no demos)."""
    body = job_payload(lm_url, rows=20, optimizer_name="labeled_few_shot", optimizer_kwargs={"k": 0}, **overrides)
    del body["username"]
    return body


def victim_job(lm_url: str, canaries: Canaries, credential: str, code_prefix: str = "") -> dict[str, Any]:
    body = own_job(lm_url)
    body["dataset"] = [{**row, "note": canaries.row} for row in body["dataset"]]
    docstring = "with a single integer."
    assert docstring in ARITHMETIC_SIGNATURE_CODE
    body["signature_code"] = code_prefix + ARITHMETIC_SIGNATURE_CODE.replace(docstring, f"{docstring} {canaries.code}")
    body["model_config"] = {"name": "openai/local-arithmetic", "base_url": lm_url, "credential": credential}
    return body


def attack_code(entry: str, targets: dict[str, Any], tail: str) -> str:
    """attacks.py, told its targets, running `entry`; `tail` (never reached) is the
    signature class or metric function the API's static checks look for."""
    return f"{ATTACKS.read_text()}\nTARGETS = json.loads({json.dumps(targets)!r})\nfinish({entry}(TARGETS))\n\n{tail}"


def local_targets(stack: RunningStack, finished: str, result: Path, cache_name: str) -> dict[str, Any]:
    settings = stack.stack.config.settings
    home = settings.home_dir
    dataset = stack.flow_run(finished)["parameters"]["dataset_ref"]["url"]
    if stack.fresh is None:
        database = {"kind": "sqlite", "path": str(settings.default_sqlite_path)}
    else:
        database = {"kind": "postgres", "dsn": f"postgresql://postgres@127.0.0.1:5432/{stack.fresh.name}"}
    return {
        "home": str(home),
        "database": database,
        "datasets_dir": f"{settings.resolved_storage_url}/{DATASETS_DIR}",
        "dataset": dataset,
        "dataset_name": Path(dataset).name,
        "results_dir": stack.env["PREFECT_LOCAL_STORAGE_PATH"],
        "result": str(result),
        "result_name": result.name,
        "lm_cache_dir": str(settings.resolved_lm_cache_dir),
        "lm_cache_name": cache_name,
        "lm_cache_keys": victim_cache_keys(settings.resolved_lm_cache_dir / cache_name),
    }


def victim_cache_keys(scope_dir: Path) -> list[str]:
    """The keys the victim's sandboxed jobs stored through their cache server (read here,
    on the trusted side; the values stay unread)."""
    with contextlib.closing(sqlite3.connect(store_path(scope_dir))) as db:
        keys = [bytes(row[0]).decode() for row in db.execute("SELECT key FROM entries LIMIT 20")]
    assert keys, f"the victim's finished job stored LM responses through its cache server in {scope_dir}"
    return keys


def prefect_targets(stack: RunningStack, victim: Tenant, attacker: Tenant) -> dict[str, Any]:
    config = stack.stack.config
    deployment = prefect_ok(stack, "GET", f"/deployments/name/{config.settings.deployment_full_name}").json()
    jobs = victim.jobs
    runs = {"read": jobs["finished"], "cancel": jobs["pending"], "cancel_via_api": jobs["pending_too"],
            "delete": jobs["cancelled"], "delete_via_api": jobs["cancelled_too"]}
    return {
        "home": str(config.settings.home_dir),
        "prefect_url": config.prefect_api_url,
        "prefect_port": config.prefect_port,
        "api_url": config.api_url,
        "runs": runs,
        "deployment_id": deployment["id"],
        "flow_id": deployment["flow_id"],
        "user_variable": user_variable(attacker.name),
    }


def new_tenant(stack: RunningStack, prefix: str) -> Tenant:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    return Tenant(name, stack.add_user(name))


def submit(tenant: Tenant, role: str, body: dict[str, Any]) -> str:
    answer = tenant.client.post("/run", json=body)
    assert answer.status_code == 201, f"{tenant.name} {role}: {answer.text}"
    tenant.jobs[role] = answer.json()["job_id"]
    return tenant.jobs[role]


def plant_victim(stack: RunningStack, lm_url: str, canaries: Canaries) -> Tenant:
    """The victim's credential, their `pending`, `cancelled` and (succeeded) `finished` jobs."""
    victim = new_tenant(stack, "victim")
    credential = "victim-key"
    stored = victim.client.post("/credentials", json={"name": credential, "api_key": f"sk-{canaries.key}"})
    assert stored.status_code == 201, stored.text
    state = {"type": "SCHEDULED", "state_details": {"scheduled_time": FAR_FUTURE}}
    with stack.paused_work_pool():
        for role in PENDING:
            pending = submit(victim, role, victim_job(lm_url, canaries, credential))
            prefect_ok(stack, "POST", f"/flow_runs/{pending}/set_state", json={"state": state, "force": True})
        for role in CANCELLED:
            cancelled = submit(victim, role, victim_job(lm_url, canaries, credential))
            assert victim.client.post(f"/jobs/{cancelled}/cancel").status_code == 200
    finished = submit(victim, "finished", victim_job(lm_url, canaries, credential))
    # Waiting on Prefect, not our API: the API must not have read (and cached) the result yet.
    stack.wait_state(finished, {"COMPLETED"}, timeout=180)
    for role in CANCELLED:
        stack.wait_state(victim.jobs[role], {"CANCELLED"}, timeout=60)
    return victim


def run_campaign(stack: RunningStack, lm_url: str, canaries: Canaries) -> Campaign:
    victim = plant_victim(stack, lm_url, canaries)
    attacker = new_tenant(stack, "mallory")
    finished = victim.jobs["finished"]
    result = stored_result_path(stack, finished)
    cache_names = sorted(p.name for p in stack.stack.config.settings.resolved_lm_cache_dir.iterdir())
    assert len(cache_names) == 1, f"the victim's job made the only LM cache directory so far: {cache_names}"
    campaign = Campaign(stack, canaries, victim, attacker, result, result.read_bytes(), all_variables(stack))

    sleeper = f"import time\ntime.sleep({VICTIM_SLEEP_SECONDS})\n"
    submit(victim, "running", victim_job(lm_url, canaries, "victim-key", code_prefix=sleeper))
    stack.wait_state(victim.jobs["running"], {"RUNNING"}, timeout=120)
    submit(attacker, "fork_bomb", own_job(lm_url, signature_code=FORK_BOMB + ARITHMETIC_SIGNATURE_CODE))
    submit(attacker, "memory_bomb", own_job(lm_url, signature_code=MEMORY_BOMB + ARITHMETIC_SIGNATURE_CODE))
    targets = campaign.targets
    targets["prefect"] = prefect_targets(stack, victim, attacker)
    targets["local"] = local_targets(stack, finished, result, cache_names[0])
    prefect_code = attack_code("run_prefect", targets["prefect"], ARITHMETIC_METRIC_CODE)
    submit(attacker, "prefect", own_job(lm_url, metric_code=prefect_code))
    local_code = attack_code("run_local", targets["local"], ARITHMETIC_SIGNATURE_CODE)
    submit(attacker, "local", own_job(lm_url, signature_code=local_code))
    submit(attacker, "bootstrap", {**job_payload(lm_url, rows=40), "username": attacker.name})
    for optimizer in ORDINARY[1:]:
        submit(attacker, optimizer, {**light_optimizer_payload(lm_url, optimizer), "username": attacker.name})

    for role, job_id in {**victim.jobs, **attacker.jobs}.items():
        if role not in PENDING:
            campaign.summaries[job_id] = stack.wait_terminal(job_id, timeout=420)
    print(campaign.timeline())
    return campaign
