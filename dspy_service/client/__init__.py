"""The Python client of dspy-service (HTTP only; imports no Prefect).

| name | file | what it is |
|---|---|---|
| `Client`, `AsyncClient` | client.py | a session: submit, optimize real DSPy objects, list and find jobs |
| `Job`, `AsyncJob` | jobs.py, async_jobs.py | one job: read, follow (a bar), cancel, delete, result, program |
| `Event`, `follow_events` | sse.py | the job's Server-Sent Events, resumed after a dropped connection |
| `build_program` | program.py | a `dspy.Module` from signature code and JSON state (no pickle) |
| `load_program` | program_files.py | a registered program from an exported zip, or by name (no pickle) |
| `Programs` | programs.py | `Client.programs`: register, list, aliases, delete, export, info |
| `optimize_body` and helpers | payload.py | DSPy objects -> a POST /run body |
| `JobProgressBar` | progress.py | the tqdm bar `wait` draws |
| `ServiceError` and subclasses, `JobFailed` | errors.py | what the client raises |
| `Connection`, `AsyncConnection` | connection.py | base URL, token, HTTP session |
"""

from dspy_service.client.async_jobs import AsyncJob
from dspy_service.client.client import AsyncClient, Client
from dspy_service.client.errors import (
    AuthError,
    Conflict,
    InvalidRequest,
    JobFailed,
    NotFound,
    ServiceError,
    ServiceUnavailable,
)
from dspy_service.client.jobs import Job
from dspy_service.client.program import build_program
from dspy_service.client.program_files import load_program
from dspy_service.client.programs import Programs
from dspy_service.client.sse import Event

__all__ = [
    "AsyncClient",
    "AsyncJob",
    "AuthError",
    "Client",
    "Conflict",
    "Event",
    "InvalidRequest",
    "Job",
    "JobFailed",
    "NotFound",
    "Programs",
    "ServiceError",
    "ServiceUnavailable",
    "build_program",
    "load_program",
]
