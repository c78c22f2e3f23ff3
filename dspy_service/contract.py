"""The facts every process of the service shares, defined once (stdlib only).

The API, the flow and its telemetry inside the job's engine, the job runtime on the
worker (relay, supervisor, zygote; deployments/runtime/) and the automations all read
and write the same flow runs. What they must agree on lives here and nowhere else:

- the job's stages (task-run names) and each stage's share of the progress bar;
- flow-run tags (server-side filters) and labels (small facts on the run row);
- schedule tags and the champion's Prefect Variable and lock names;
- the keys of a job's Prefect artifacts, and the name of the file it keeps once compiled;
- what a sandboxed engine is told, and the job-scoped Prefect proxy's own route;
- the progress events' logger and wire format;
- the Prefect state types that end a run, and the signal that asks a job to stop;
- the wording users see when a job ends outside its own code.

Importing this module never imports Prefect, DSPy or httpx: the relay and supervisor
import it on every job start. How it fails: `decode_*` helpers return their default for
anything malformed rather than raise; a label value that is not a scalar is sent as JSON.
"""

from __future__ import annotations

import hashlib
import json
import signal
import uuid
from collections.abc import Mapping
from enum import StrEnum
from typing import Any


# -- stages --------------------------------------------------------------------------------
class Stage(StrEnum):
    """The flow's task runs, in order. The API looks runs up by these names."""

    LOAD_DATA = "load-and-split-data"
    BUILD_LMS = "build-language-models"
    LOAD_USER_CODE = "load-user-code"
    COMPILE = "compile-program"
    EVALUATE = "evaluate-programs"
    SERIALIZE = "serialize-program-artifact"
    CHAMPION_GATE = "champion-gate"  # runs of a schedule only
    PREDICT = "predict-rows"  # batch prediction jobs (flows/batch_predict.py) only


# Each stage's share of the whole job (percent start, end) when the progress artifact
# turns bars into one overall percentage. Every stage has one (a unit test checks).
STAGE_SPANS: dict[Stage, tuple[float, float]] = {
    Stage.LOAD_DATA: (0.0, 2.0),
    Stage.BUILD_LMS: (2.0, 3.0),
    Stage.LOAD_USER_CODE: (3.0, 5.0),
    Stage.COMPILE: (5.0, 85.0),
    Stage.EVALUATE: (85.0, 96.0),
    Stage.SERIALIZE: (96.0, 97.0),
    Stage.CHAMPION_GATE: (97.0, 100.0),
    Stage.PREDICT: (3.0, 100.0),  # a batch job's own scale: build LMs, then predict every row
}
# The task runs whose start makes a job `running` (before it: `validating`): an
# optimization job's compile task, a batch prediction job's predict task.
WORK_STAGES = (Stage.COMPILE, Stage.PREDICT)
# A batch prediction job's `job` parameter says so (dspy_service/batch_spec.py).
BATCH_JOB_KIND = "batch-predict"

# -- flow-run tags (Prefect 3.9 filters runs by tag, not by label) --------------------------
SERVICE_TAG = "dspy-service"
USER_TAG_PREFIX = "user:"
SCHEDULE_TAG_PREFIX = "dspy-schedule:"
# On every job whose end is to be announced to a webhook (its spec has a notify_url): the
# delivery automation fires only for runs with it (deployments/automations.py).
NOTIFY_TAG = "dspy-notify"
# A sweep (api/sweeps.py) is a parent flow run tagged SWEEP_TAG; each of its cells is an
# ordinary job tagged with sweep_tag(<sweep id>) and labelled SWEEP_ID / SWEEP_CELL.
SWEEP_TAG = "dspy-sweep"
SWEEP_TAG_PREFIX = "dspy-sweep:"
SWEEP_FLOW_NAME = "dspy-sweep"
SWEEP_CELL_TASK = "sweep-cell"
CHAMPION_VARIABLE_PREFIX = "dspy-champion-"
CHAMPION_LOCK_PREFIX = "dspy-champion-gate-"


def user_tag(username: str) -> str:
    return f"{USER_TAG_PREFIX}{username}"


def schedule_tag(schedule_id: str) -> str:
    """Tag on every run of a schedule (server-side filter for its run history)."""
    return f"{SCHEDULE_TAG_PREFIX}{schedule_id}"


def sweep_tag(sweep_id: str) -> str:
    """Tag on every cell (child job) of a sweep: the server-side filter for its leaderboard."""
    return f"{SWEEP_TAG_PREFIX}{sweep_id}"


def champion_variable(schedule_id: str) -> str:
    """Prefect Variable holding a schedule's champion pointer (names: lowercase, - and _)."""
    return f"{CHAMPION_VARIABLE_PREFIX}{schedule_id}".lower()


def champion_lock(schedule_id: str) -> str:
    """One-slot global concurrency limit: champion gates of one schedule decide in turn."""
    return f"{CHAMPION_LOCK_PREFIX}{schedule_id}".lower()


# -- a job's Prefect artifacts: keyed by the job, so a job can only write its own keys --------
def artifact_key_prefix(job_id: str | uuid.UUID) -> str:
    """`job-<first 12 hex digits of the job id>-`: every artifact key of the job starts so."""
    return f"job-{uuid.UUID(str(job_id)).hex[:12]}-"


def artifact_key(job_id: str | uuid.UUID, kind: str) -> str:
    """`job-<12 hex>-<kind>` (progress, results, prompt): lowercase letters, digits, dashes."""
    return f"{artifact_key_prefix(job_id)}{kind}"


# -- a job's compiled program, kept in its result storage before evaluation -----------------
def kept_program_key(job_id: str | uuid.UUID) -> str:
    """The result-storage file name of what a job keeps once compiled (tasks/checkpoint.py),
    read back for a job that ends cancelled or failed without a result (api/kept_programs.py)."""
    return f"dspy-kept-program-{uuid.UUID(str(job_id))}.json"


# -- the sandbox: what the engine is told, and what the job-scoped Prefect proxy serves ------
# Set (to "1") in the environment of an engine that runs inside the sandbox, where only
# its own job's files are mounted and Prefect is reached through the job-scoped proxy
# (deployments/runtime/prefect_proxy.py).
SANDBOXED_ENV = "DSPY_SERVICE_SANDBOXED"
# Served by that proxy itself, under the API root: the schedule's champion run and its
# result, read on the trusted side (a sandbox cannot read another job's result file).
CHAMPION_RESULT_ROUTE = "/dspy-service/champion-result"
# Also the proxy's own: a promoted run of a schedule with `register_as` is registered there,
# on the trusted side (dspy_service/schedule_registration.py).
CHAMPION_REGISTRATION_ROUTE = "/dspy-service/champion-registration"


def engine_is_sandboxed(environ: Mapping[str, str]) -> bool:
    return environ.get(SANDBOXED_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


# -- users, tokens and secrets: Prefect Variables and Secret blocks ---------------------------
# Prefect names allow lowercase letters, digits and dashes (Variables also `_`), so
# usernames of token users are restricted to USERNAME_PATTERN; block names of an owner's
# credentials carry a digest of the owner (auth-off usernames are free text).
USERNAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
CREDENTIAL_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,39}$"
USER_VARIABLE_PREFIX = "dspy-user-"
CREDENTIAL_BLOCK_PREFIX = "dspy-cred-"
INLINE_SECRET_BLOCK_PREFIX = "dspy-secret-"
SECRET_BLOCK_TYPE = "secret"  # Prefect's Secret block type slug: every job secret is one
TOKEN_PREFIX = "dss"  # tokens read `dss.<username>.<secret>`: the store is looked up by name


WEBHOOK_SECRET_BLOCK_PREFIX = "dspy-whsec-"
WEBHOOK_DEFAULT_VARIABLE_PREFIX = "dspy-notify-"
WEBHOOK_LOG_VARIABLE_PREFIX = "dspy-webhook-"


def webhook_secret_block(owner: str) -> str:
    """Secret block holding the webhook signing secret of `owner`."""
    return f"{WEBHOOK_SECRET_BLOCK_PREFIX}{owner_digest(owner)}"


def webhook_default_variable(owner: str) -> str:
    """Prefect Variable holding the default notify_url of `owner`."""
    return f"{WEBHOOK_DEFAULT_VARIABLE_PREFIX}{owner_digest(owner)}"


BUDGET_DEFAULT_VARIABLE_PREFIX = "dspy-budget-"


def budget_default_variable(owner: str) -> str:
    """Prefect Variable holding the default budget of `owner` (dspy_service/budget_defaults.py)."""
    return f"{BUDGET_DEFAULT_VARIABLE_PREFIX}{owner_digest(owner)}"


def webhook_log_variable(job_id: str | uuid.UUID) -> str:
    """Prefect Variable holding the webhook delivery log of one job (deleted with the job)."""
    return f"{WEBHOOK_LOG_VARIABLE_PREFIX}{uuid.UUID(str(job_id))}"


def user_variable(username: str) -> str:
    """Prefect Variable of a token user: {username, admin, token_sha256, created_at}."""
    return f"{USER_VARIABLE_PREFIX}{username}"


def owner_digest(owner: str) -> str:
    return hashlib.sha256(owner.encode()).hexdigest()[:16]


def credential_block(owner: str, name: str) -> str:
    """Secret block of the credential `name` of `owner`."""
    return f"{CREDENTIAL_BLOCK_PREFIX}{owner_digest(owner)}-{name}"


def inline_secret_block(secret_id: str) -> str:
    """Secret block holding the inline secrets of one job or schedule (deleted with it)."""
    return f"{INLINE_SECRET_BLOCK_PREFIX}{secret_id}".lower()


# -- the program registry (dspy_service/program_store.py) ------------------------------------
PROGRAM_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
PROGRAM_ALIAS_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,39}$"
LATEST_ALIAS = "latest"  # the highest version, unless an alias of that name is set
PROGRAM_VERSION_VARIABLE_PREFIX = "dspy-prog-"
PROGRAM_ALIAS_VARIABLE_PREFIX = "dspy-alias-"


def program_digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def program_owner_prefix(owner: str) -> str:
    """Prefix of the version Variables of every program of `owner`."""
    return f"{PROGRAM_VERSION_VARIABLE_PREFIX}{owner_digest(owner)}-"


def program_version_prefix(owner: str, name: str) -> str:
    return f"{program_owner_prefix(owner)}{program_digest(name)}-v"


def program_version_variable(owner: str, name: str, version: int) -> str:
    """Prefect Variable of one registered version (its entry; the document is in storage)."""
    return f"{program_version_prefix(owner, name)}{int(version)}"


def program_owner_alias_prefix(owner: str) -> str:
    """Prefix of the alias Variables of every program of `owner`."""
    return f"{PROGRAM_ALIAS_VARIABLE_PREFIX}{owner_digest(owner)}-"


def program_alias_prefix(owner: str, name: str) -> str:
    return f"{program_owner_alias_prefix(owner)}{program_digest(name)}-"


def program_alias_variable(owner: str, name: str, alias: str) -> str:
    """Prefect Variable of an alias: {"name", "version", "updated_at"}."""
    return f"{program_alias_prefix(owner, name)}{alias}"


# -- flow-run labels: small per-job facts the job list reads with the runs ------------------
BASELINE_TEST_METRIC = "dspy.baseline_test_metric"
OPTIMIZED_TEST_METRIC = "dspy.optimized_test_metric"
LATEST_METRICS = "dspy.latest_metrics"  # JSON object
ESTIMATED_REMAINING = "dspy.estimated_remaining"  # seconds; UNKNOWN_REMAINING: no estimate now
UNKNOWN_REMAINING = -1
PROGRESS_COUNT = "dspy.progress_count"
LOG_COUNT = "dspy.log_count"
EVALUATION_ERRORS = "dspy.evaluation_errors"  # JSON object: program -> {errors, examples, top_errors}
USAGE = "dspy.usage"  # JSON object: calls, tokens, cost
TERMINATION_REASON = "dspy.termination_reason"  # how compile ended: completed, optimizer_error, budget_exhausted
BUDGET = "dspy.budget"  # JSON object: the job's budget, what it used and the overshoot (tasks/budget.py)
STAGE = "dspy.stage"
SCHEDULE_ID = "dspy.schedule_id"
DATASET_ROWS = "dspy.dataset_rows"  # rows the job read (inline or from its dataset_source)
DATASET_SHA256 = "dspy.dataset_sha256"  # hash of those rows
CHAMPION_PROMOTED = "dspy.champion_promoted"  # runs of a schedule: did the gate promote it
CHAMPION_SCORE = "dspy.champion_score"  # the previous champion re-scored on this test split
CHAMPION_PREVIOUS = "dspy.champion_previous_job_id"
# The optimized program's test evaluation: wall-clock seconds per example at the job's num_threads.
SECONDS_PER_EXAMPLE = "dspy.seconds_per_example"
SWEEP_ID = "dspy.sweep"  # a sweep's cell: the parent sweep's id
SWEEP_CELL = "dspy.sweep_cell"  # ... and the cell's index in the grid


def encode_label(value: Any) -> Any:
    """Label values are scalars; objects travel as JSON text."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), default=str)
    return value


def decode_json_label(labels: dict[str, Any], key: str, default: Any) -> Any:
    raw = labels.get(key)
    if not isinstance(raw, str):
        return default
    try:
        return json.loads(raw)
    except ValueError:
        return default


def number_label(labels: dict[str, Any], key: str) -> float | None:
    value = labels.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# -- progress events: log records the API splits out of the run's logs ----------------------
PROGRESS_LOGGER = "dspy_service.progress"
PROGRESS_PREFIX = "progress "


def encode_progress(event: dict[str, Any]) -> str:
    """The log message carrying one `{timestamp, event, metrics}` progress event."""
    return PROGRESS_PREFIX + json.dumps(event, separators=(",", ":"), default=str)


def decode_progress(logger_name: str, message: str) -> dict[str, Any] | None:
    """The event a log record carries, or None for an ordinary (or malformed) record."""
    if logger_name != PROGRESS_LOGGER or not message.startswith(PROGRESS_PREFIX):
        return None
    try:
        event = json.loads(message[len(PROGRESS_PREFIX) :])
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


# -- run states and stopping ----------------------------------------------------------------
# Prefect state types that end a run. Not CANCELLING: its job process is still being stopped.
TERMINAL_STATE_TYPES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})

# The supervisor sends this to the engine to ask the job to stop cooperatively (the
# engine's handler sets a flag LMs and optimizers check) before killing it after a grace.
STOP_SIGNAL = signal.SIGUSR1

# Set in a sandboxed engine's environment (deployments/runtime/sandbox.py): the engine runs
# without Prefect credentials and reads its job's secrets from the file its supervisor handed it.
SANDBOXED_ENV = "DSPY_SERVICE_SANDBOXED"
JOB_SECRETS_FILE_ENV = "DSPY_SERVICE_JOB_SECRETS_FILE"

# -- wording for jobs that ended outside their own code -------------------------------------
ZOMBIE_MESSAGE = (
    "the job's process stopped sending heartbeats (its worker host or process died); the job was marked failed"
)
STUCK_CANCEL_MESSAGE = "cancelled by the user; its worker could not be reached to confirm"
STUCK_PENDING_MESSAGE = (
    "the worker that took this job went away before starting it; the job was marked failed, submit it again"
)
WORKER_GONE_MESSAGE = (
    "the worker running this job went away (it shut down or died), so the job was stopped; submit it again"
)
KILLED_MESSAGE = (
    "the job process was killed (SIGKILL): by the operating system (out of memory?), by code in the job "
    "(e.g. os.kill) or by an operator"
)


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def signal_message(signum: int, memory_mb: int | None = None) -> str:
    """A job process that died from `signum` (SIGKILL and others)."""
    if signum == signal.SIGKILL:
        return KILLED_MESSAGE
    message = f"the job process died from {signal_name(signum)}"
    if memory_mb:
        message += (
            f"; if the job was using a lot of memory it may have run out (limit {memory_mb} MB, "
            "DSPY_SERVICE_JOB_MEMORY_MB)"
        )
    return message


def exit_status_message(code: int) -> str:
    """A job process's exit status as a worker reports it (negative or > 128: a signal)."""
    if code < 0 or code > 128:
        return signal_message(-code if code < 0 else code - 128)
    return f"the job process exited unexpectedly with status code {code}"


def human_bytes(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} bytes"
