"""Limits of one job process, enforced by the job supervisor (deployments/runtime/), read
from `DSPY_SERVICE_*` like every setting: a mixin of `ServiceSettings`
(dspy_service/settings.py) kept apart so that module stays short.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings


class JobLimitSettings(BaseSettings):
    job_timeout_seconds: float = Field(
        default=6 * 3600,
        gt=0,
        description="Wall-clock limit of a job; a job's own `timeout_seconds` may only lower it.",
    )
    job_memory_mb: int = Field(
        default=8192,
        ge=0,
        description="Address-space limit of a job process (RLIMIT_AS; a GEPA job with 4 threads maps ~2.6 GB "
        "while using ~0.3 GB); 0 = none.",
    )
    job_cpu_seconds: int = Field(
        default=24 * 3600, ge=0, description="CPU-time backstop of a job process (RLIMIT_CPU); 0 = none."
    )
    job_max_file_mb: int = Field(
        default=8192, ge=0, description="Largest file a job may write (RLIMIT_FSIZE); 0 = none."
    )
    job_max_open_files: int = Field(default=4096, ge=64, description="RLIMIT_NOFILE of a job process.")
    job_max_tasks: int = Field(
        default=512,
        ge=32,
        description="Processes + threads a job may run at once (cgroup pids.max where writable, "
        "else RLIMIT_NPROC and a process count watch).",
    )
    job_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="Scheduling niceness of job processes: the API, the worker and the job supervisor stay "
        "responsive however hard a job spins.",
    )
    job_output_limit_mb: float = Field(
        default=4.0, gt=0, description="stdout/stderr a job may send to the worker (first and last half kept)."
    )
    job_print_limit_mb: float = Field(
        default=2.0, gt=0, description="Printed output a job may ship to its logs (first and last part kept)."
    )
    job_cancel_grace_seconds: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description="After a cancel or timeout the job is told to stop (no new LM calls, GEPA ends its search) "
        "and its processes are killed this much later. 0: at once (bench/cancel_latency.py: p95 0.6 s to a dead "
        "process tree, vs 1.2 s with 0.5, and the same LM calls after the cancel).",
    )
