"""Settings of program serving (POST /programs/{name}/predict and the program server,
deployments/program_server/), read from `DSPY_SERVICE_*` like every setting: a mixin of
`ServiceSettings` (dspy_service/settings.py) kept apart so the registry's settings stay short.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

DEFAULT_PROGRAM_SERVER_PORT = 8790


class ProgramServingSettings(BaseSettings):
    predict_max_batch: int = Field(
        default=32, ge=1, le=1000, description="Most inputs one POST /programs/{name}/predict may send; more: 422."
    )
    program_resolve_cache_seconds: float = Field(
        default=5.0, ge=0, le=60,
        description="How long an API replica reuses what a program name resolved to (a version, an alias, "
        "`latest`) on the predict path; an alias moved, a version registered or deleted through another replica "
        "or by a schedule is seen within this time (at once on the replica that made the change), as token "
        "revokes are (`token_cache_seconds`). 0: resolve on every call.",
    )
    program_server_url: str = Field(
        default=f"http://127.0.0.1:{DEFAULT_PROGRAM_SERVER_PORT}",
        description="Where the API reaches the program server (`dspy-service program-server`, started by "
        "`dspy-service up`); the server listens on this URL's host and port. Keep it on loopback or a private "
        "network: every request needs the internal token as well.",
    )
    program_server_token: str | None = Field(
        default=None,
        description="The internal token the API sends to the program server (the same on both sides). Default: "
        "the one in <home>/program-server-token, created by `dspy-service up` (mode 0600).",
    )
    program_server_max_programs: int = Field(
        default=8, ge=1, le=256,
        description="Program versions the program server keeps loaded (one child process each); loading one more "
        "closes the least recently used.",
    )
    program_server_idle_seconds: float = Field(
        default=600.0, gt=0, le=7 * 86400,
        description="A loaded program version that served no request for this long is closed (its process ends).",
    )
    program_server_concurrency: int = Field(
        default=4, ge=1, le=64,
        description="Predictions one loaded program version runs at once (threads of its process); more wait.",
    )
    program_server_timeout_seconds: float = Field(
        default=300.0, gt=0, le=3600,
        description="Longest a predict call may take at the program server (LM retries included); longer: 504.",
    )
    program_start_timeout_seconds: float = Field(
        default=60.0, gt=0, le=600,
        description="Longest a program version's process may take to load (import DSPy, build the program).",
    )

    @field_validator("program_server_url")
    @classmethod
    def _url_has_port(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"program_server_url must be http://host:port, not {value!r}")
        return value.rstrip("/")

    @property
    def program_server_address(self) -> tuple[str, int]:
        parts = urlsplit(self.program_server_url)
        assert parts.hostname and parts.port
        return parts.hostname, parts.port

    def program_server_token_file(self, home_dir: Path) -> Path:
        return home_dir / "program-server-token"


def program_server_token(settings: ProgramServingSettings, home_dir: Path) -> str:
    """The internal token of the program server: the setting, else the home's token file
    (created 0600 by whichever of the API, the server or `up` needs it first)."""
    if settings.program_server_token:
        return settings.program_server_token
    import os
    import secrets

    path = settings.program_server_token_file(home_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        value = path.read_text().strip()
        if not value:
            raise ValueError(f"{path} is empty: delete it to have a new program server token made") from None
        return value
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()
