"""Service configuration, read from `DSPY_SERVICE_*` environment variables."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dspy_service.egress_policy import EgressPolicy
from dspy_service.job_limit_settings import JobLimitSettings
from dspy_service.serving_settings import ProgramServingSettings

# The optimization flow's name; with `deployment` it forms the deployment's full name.
FLOW_NAME = "optimize-program"
# The webhook delivery flow's name (api/webhook_flow.py); with `notify_deployment` likewise.
NOTIFY_FLOW_NAME = "deliver-job-event"
# The batch prediction flow's name (flows/batch_predict.py); with `batch_deployment` likewise.
BATCH_FLOW_NAME = "batch-predict"


class ServiceSettings(ProgramServingSettings, JobLimitSettings, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DSPY_SERVICE_", extra="ignore")

    home: Path = Field(
        default=Path("~/.dspy-service"),
        description="Where `dspy-service up` keeps all state (database, results, datasets, cache).",
    )
    storage_url: str | None = Field(
        default=None,
        description="fsspec URL of shared storage for datasets and results (a path every "
        "API and worker host can read: NFS, s3://...). Default: <home>/storage.",
    )
    lm_cache: bool = Field(default=True, description="Cache LM responses, scoped per tenant.")
    lm_cache_dir: Path | None = Field(default=None, description="Default: <home>/lm-cache.")
    lm_cache_entry_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=4096,
        le=256 * 1024 * 1024,
        description="Largest LM response (pickled) a sandboxed job's cache server stores; larger ones are not cached.",
    )
    lm_cache_scope_bytes: int = Field(
        default=2 * 1024**3,
        ge=1024 * 1024,
        le=1024**4,
        description="Bytes a tenant scope's cache server store keeps (sandboxed jobs); past it the oldest entries "
        "are deleted. The unsandboxed engine's DSPy disk cache keeps DSPy's own limit.",
    )
    num_threads: int = Field(default=4, ge=1, description="Default DSPy threads per job.")
    log_level: str = Field(default="INFO", description="Level of dspy/optimizer logs kept per job.")
    evaluation_error_limit: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Share of the optimized program's test examples that may fail (an LM or metric error scores 0 "
        "and is counted) before the job fails; the compiled program is kept as its artifact either way. The "
        "baseline's errors are counted, never fatal.",
    )

    database_url: str | None = Field(
        default=None,
        description="Prefect's database for `dspy-service up`, e.g. "
        "postgresql+asyncpg://user@host:5432/db. Default: SQLite under <home>.",
    )
    work_pool: str = Field(default="dspy-service", description="Prefect work pool of the jobs.")
    deployment: str = Field(default="dspy-service", description="Deployment name of the flow.")
    batch_deployment: str = Field(
        default="dspy-service-batch",
        description="Deployment name of the batch prediction flow (same work pool and job runtime as optimizations).",
    )
    max_batch_threads: int = Field(
        default=16, ge=1, le=256, description="Most rows one batch prediction job predicts at once (`num_threads`)."
    )
    job_slots: int = Field(default=2, ge=1, description="Jobs running at once (pool concurrency).")
    max_dataset_rows: int = Field(default=200_000, ge=1)
    max_request_mb: float = Field(default=100.0, gt=0, description="Largest POST body accepted.")
    scheduler_loop_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How often the Prefect server's scheduler creates the runs of /schedules "
        "(PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS for `dspy-service up`). Keep it below "
        "your shortest schedule interval times the runs Prefect keeps ahead (3).",
    )

    sandbox: Literal["on", "off"] = Field(
        default="on",
        description="Run each job's engine (the process running user code) in a bubblewrap sandbox: "
        "own user/pid/mount/network/ipc/uts namespaces, only its own files, Prefect and the internet "
        "only through the supervisor's job-scoped proxies (deployments/runtime/sandbox.py). `off` runs "
        "user code with the worker's view of the host and its Prefect credentials; `up`, the worker "
        "and /health then warn.",
    )
    dataset_dirs: str = Field(
        default="",
        description="Comma-separated directories on the worker hosts from which a job's `dataset_source` "
        "file path may be read (after resolving symlinks; never inside the service home). Empty: file "
        "paths are refused, only http(s) sources and uploaded rows work.",
    )
    sandbox_uid: int = Field(
        default=65534, ge=1, le=2**31 - 1, description="The user id a job's engine runs as inside its sandbox."
    )
    sandbox_dir: Path | None = Field(
        default=None,
        description="Local directory for the per-job sandbox directories (sockets, private work "
        "directory); removed when the job ends. Default: <system temp>/dspy-service-jobs.",
    )
    job_env_passthrough: str = Field(
        default="",
        description="Comma-separated extra environment variables (names, or prefixes ending in *) that job "
        "processes may see besides the built-in allow-list.",
    )
    lm_unreachable_calls: int = Field(
        default=8,
        ge=1,
        le=1000,
        description="A job fails after this many consecutive LM calls that could not connect to the endpoint "
        "(after the first, calls are sent without retries), instead of waiting out every call's backoff.",
    )
    lm_num_retries: int = Field(
        default=5,
        ge=0,
        le=20,
        description="Retries of an LM call on transient errors (429, 5xx, timeouts, connection errors), "
        "with exponential backoff (1, 2, 4, ... s) or the provider's Retry-After.",
    )
    zombie_after_seconds: int = Field(
        default=90,
        ge=45,
        description="A running job whose process sent no heartbeat for this long is marked crashed.",
    )
    stuck_pending_seconds: int = Field(
        default=120,
        ge=10,
        description="A job a worker took (Pending) but never started for this long is marked failed: its "
        "worker died between taking and starting it. Starting takes seconds; keep a margin for loaded hosts.",
    )
    stuck_job_sweep_seconds: float = Field(
        default=15.0,
        gt=0,
        description="How often the API looks for jobs stuck Pending or Cancelling with nobody left to end "
        "them (the durable twin of the automations in deployments/automations.py).",
    )
    log_settle_seconds: float = Field(
        default=10.0,
        ge=0,
        description="The API caches a finished job's logs once its terminal state is this old: the job's "
        "log shipper and its worker may still send a few lines right after the run ended.",
    )
    read_model_size: int = Field(
        default=2000,
        ge=0,
        le=100_000,
        description="Job flow runs each API process keeps to answer GET /jobs/{id} and /jobs/{id}/summary without "
        "asking Prefect (api/run_cache.py), kept current by Prefect's event stream; least recently used go first. "
        "0: off, every read asks Prefect.",
    )
    read_model_max_age_seconds: float = Field(
        default=1.0,
        gt=0,
        le=1.0,
        description="Oldest read of Prefect the read model serves: a delete or label change made elsewhere (they "
        "emit no event) shows within this time; state changes show as their event arrives.",
    )
    list_index_max_runs: int = Field(
        default=20_000,
        ge=0,
        le=200_000,
        description="GET /jobs pages are cut from an index of every job run each API process holds "
        "(api/run_index.py), kept current by Prefect's event stream and a count every read_model_max_age_seconds "
        "/ 2 while pages are asked for. With more job runs stored than this, pages read Prefect. 0: off.",
    )
    events_heartbeat_seconds: float = Field(
        default=15.0,
        ge=1,
        le=300,
        description="GET /jobs/{id}/events sends a `: keepalive` comment after this long without an event, so "
        "proxies and clients keep an idle stream open.",
    )

    # -- identity, ownership and request hardening (api/identity.py, README "Users and tokens") --
    auth: Literal["on", "off"] = Field(
        default="on",
        description="`on`: every request but GET /health needs `Authorization: Bearer <token>`. `off`: the "
        "original service's open single-user mode (the body's `username`), allowed only while the API listens "
        "on loopback.",
    )
    api_host: str = Field(
        default="127.0.0.1",
        description="The address the API listens on (`dspy-service up --host`); auth `off` needs a loopback one.",
    )
    token_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        le=60,
        description="How long an API replica trusts a token it has checked; a revoke made on another replica "
        "takes effect within this time (at once on the replica that made it).",
    )
    cors_origins: str = Field(
        default="",
        description="Comma-separated origins a browser page may call the API from; empty: no CORS at all.",
    )
    max_code_kb: int = Field(
        default=200, ge=1, le=10_000, description="Largest signature_code / metric_code accepted (KB)."
    )
    max_active_jobs_per_user: int = Field(
        default=20, ge=1, description="Pending + running jobs one user may have (admins exempt); more: 429."
    )
    max_sweep_cells: int = Field(
        default=50, ge=1, le=1000, description="Grid cells (child jobs) one POST /sweeps may create; more: 400."
    )
    max_schedules_per_user: int = Field(
        default=20, ge=1, description="Schedules one user may own (admins exempt); more: 429."
    )
    min_schedule_interval_seconds: float = Field(
        default=60.0,
        ge=1,
        description="Shortest interval (or cron gap) a non-admin's schedule may fire at; shorter: 400.",
    )

    # -- where jobs may connect (dspy_service/egress_policy.py) --
    egress_allow: str = Field(
        default="",
        description="Comma-separated hosts, host:port pairs and CIDR blocks that jobs may reach although they are "
        "loopback, private or otherwise non-public (e.g. `127.0.0.1:8765,10.0.0.0/8`); a job still reaches only "
        "its own models' and dataset's hosts. Link-local and cloud metadata addresses are always denied.",
    )
    max_fetch_mb: float = Field(
        default=512.0,
        gt=0,
        le=100_000,
        description="Largest http(s) dataset_source a job downloads; a larger one fails the job.",
    )

    # -- webhooks: job end notifications (api/webhook_flow.py, README "Webhooks") --
    notify_work_pool: str = Field(
        default="dspy-service-notify",
        description="Prefect work pool of the webhook delivery flow (trusted code of ours, run outside the job "
        "sandbox by its own worker; `dspy-service up` starts one).",
    )
    notify_deployment: str = Field(default="dspy-service-notify", description="Deployment name of the delivery flow.")
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, le=120, description="Time one webhook delivery attempt may take (connect to answer)."
    )
    webhook_first_retry_seconds: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="Wait before the first retry of a failed webhook delivery; each further wait doubles.",
    )
    webhook_max_retry_seconds: float = Field(
        default=300.0, gt=0, le=3600, description="Longest wait between two delivery attempts of one event."
    )
    webhook_give_up_seconds: float = Field(
        default=3600.0,
        ge=0,
        le=7 * 86400,
        description="How long after the first attempt a webhook event is retried; 0: one attempt only.",
    )

    warm_start: bool = Field(
        default=True,
        description="Start each worker with a zygote (deployments/runtime/zygote.py) that has imported Prefect, "
        "DSPy and the flow, and fork every job's supervisor (and, with the sandbox off, its engine) from it instead "
        "of starting fresh interpreters; with the sandbox on, jobs run in warm sandboxes (warm_sandboxes). On by "
        "default; false (or `dspy-service up --cold-start`, `dspy-service worker --cold-start`): every job starts "
        "its processes fresh. Restart workers after a code upgrade.",
    )

    warm_sandboxes: int | None = Field(
        default=None,
        ge=0,
        le=64,
        description="With warm start and the sandbox on: sandboxes each worker starts before their jobs arrive, "
        "imports done (deployments/runtime/warm_slots.py); each costs the memory of an idle engine (~200 MB). "
        "Default: job_slots; 0: every job starts its sandbox when it arrives.",
    )

    serialize_run_creates: bool | None = Field(
        default=None,
        description="Create flow runs one at a time (SQLite answers parallel writes with "
        "'database is locked'). Default: on when the Prefect database is SQLite.",
    )

    @field_validator("egress_allow")
    @classmethod
    def _egress_allow_parses(cls, value: str) -> str:
        EgressPolicy.parse(value)  # ValueError naming the bad entry
        return value

    @property
    def egress_policy(self) -> EgressPolicy:
        return EgressPolicy.parse(self.egress_allow)

    def auth_mode_problem(self) -> str | None:
        """Why this configuration may not run (auth off on a non-loopback address), or None."""
        if self.auth == "off" and not is_loopback_host(self.api_host):
            return (
                f"DSPY_SERVICE_AUTH=off (no tokens) is allowed only while the API listens on loopback, not on "
                f"{self.api_host!r}: listen on 127.0.0.1, or turn auth on and give users tokens "
                "(`dspy-service users add NAME`)"
            )
        return None

    @property
    def deployment_full_name(self) -> str:
        return f"{FLOW_NAME}/{self.deployment}"

    @property
    def batch_deployment_full_name(self) -> str:
        return f"{BATCH_FLOW_NAME}/{self.batch_deployment}"

    @property
    def job_deployment_names(self) -> tuple[str, ...]:
        """The deployments whose flow runs are jobs (GET /jobs and friends): the one place that says so."""
        return (self.deployment_full_name, self.batch_deployment_full_name)

    @property
    def notify_deployment_full_name(self) -> str:
        return f"{NOTIFY_FLOW_NAME}/{self.notify_deployment}"

    @property
    def default_sqlite_path(self) -> Path:
        """Prefect's SQLite database when no database_url is set."""
        return self.home_dir / "prefect.db"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.default_sqlite_path}"

    @property
    def uses_sqlite(self) -> bool:
        import os

        url = os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL") or self.resolved_database_url
        return url.startswith("sqlite")

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser()

    @property
    def admin_token_file(self) -> Path:
        """Where `dspy-service up` writes the first admin's token (mode 0600)."""
        return self.home_dir / "admin-token"

    @property
    def prefect_auth_file(self) -> Path:
        """Where `dspy-service up` keeps the Prefect server's API auth string (mode 0600)."""
        return self.home_dir / "prefect-auth"

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or str(self.home_dir / "storage")

    @property
    def resolved_lm_cache_dir(self) -> Path:
        return (self.lm_cache_dir or self.home_dir / "lm-cache").expanduser()


def is_loopback_host(host: str | None) -> bool:
    """Loopback addresses (127.0.0.0/8, ::1) and `localhost`; anything else is reachable from outside."""
    import ipaddress

    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=1)
def get_settings() -> ServiceSettings:
    return ServiceSettings()
