"""Service configuration, read from `DSPY_SERVICE_*` environment variables."""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The optimization flow's name; with `deployment` it forms the deployment's full name.
FLOW_NAME = "optimize-program"


class ServiceSettings(BaseSettings):
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
    num_threads: int = Field(default=4, ge=1, description="Default DSPy threads per job.")
    log_level: str = Field(default="INFO", description="Level of dspy/optimizer logs kept per job.")

    database_url: str | None = Field(
        default=None,
        description="Prefect's database for `dspy-service up`, e.g. "
        "postgresql+asyncpg://user@host:5432/db. Default: SQLite under <home>.",
    )
    work_pool: str = Field(default="dspy-service", description="Prefect work pool of the jobs.")
    deployment: str = Field(default="dspy-service", description="Deployment name of the flow.")
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
    serialize_run_creates: bool | None = Field(
        default=None,
        description="Create flow runs one at a time (SQLite answers parallel writes with "
        "'database is locked'). Default: on when the Prefect database is SQLite.",
    )

    @property
    def deployment_full_name(self) -> str:
        return f"{FLOW_NAME}/{self.deployment}"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.home_dir / 'prefect.db'}"

    @property
    def uses_sqlite(self) -> bool:
        import os

        url = os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL") or self.resolved_database_url
        return url.startswith("sqlite")

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser()

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or str(self.home_dir / "storage")

    @property
    def resolved_lm_cache_dir(self) -> Path:
        return (self.lm_cache_dir or self.home_dir / "lm-cache").expanduser()


@functools.lru_cache(maxsize=1)
def get_settings() -> ServiceSettings:
    return ServiceSettings()
