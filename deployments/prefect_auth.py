"""The Prefect server's API auth string: one random secret per home, which the server
checks (`PREFECT_SERVER_API_AUTH_STRING`) and every client of it sends
(`PREFECT_API_AUTH_STRING`, as `Authorization: Basic base64(<auth string>)`).

Prefect leaves `GET /api/health` and `GET /api/ready` open; every other request without
the string gets 401. The Prefect UI asks for the string on its login page.

Creating the file raises OSError if the home is not writable; reading it raises
OSError if it is unreadable and ValueError if it is empty.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from dspy_service.settings import ServiceSettings

SERVER_ENV = "PREFECT_SERVER_API_AUTH_STRING"
CLIENT_ENV = "PREFECT_API_AUTH_STRING"
LOCAL_PREFECT_API_URL = "http://127.0.0.1:4200/api"  # `dspy-service up`'s default server


def ensure_auth_string(path: Path) -> str:
    """The auth string kept in `path`; a fresh one (mode 0600) if there is none yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_auth_string(path)
    with os.fdopen(fd, "w") as file:
        file.write(f"dspy:{secrets.token_urlsafe(32)}\n")
    return read_auth_string(path)


def read_auth_string(path: Path) -> str:
    value = path.read_text().strip()
    if not value:
        raise ValueError(f"{path} is empty: delete it to have `dspy-service up` generate a new auth string")
    return value


def auth_headers(auth_string: str) -> dict[str, str]:
    """The header a Prefect client sends (prefect.client.orchestration.PrefectClient)."""
    return {"Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode()}


def ui_origins(prefect_port: int) -> str:
    """The origins of the server's own UI, the only pages that may call it cross-origin
    (the UI reached as localhost calls the API URL, 127.0.0.1)."""
    return f"http://127.0.0.1:{prefect_port},http://localhost:{prefect_port}"


def server_environment(auth_string: str, prefect_port: int) -> dict[str, str]:
    return {SERVER_ENV: auth_string, "PREFECT_SERVER_CORS_ALLOWED_ORIGINS": ui_origins(prefect_port)}


def client_environment(settings: ServiceSettings, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """What a Prefect client started on this host needs besides `environ`: the local
    server's URL and the home's auth string, unless `environ` sets them (a worker on
    another host sets both)."""
    env: dict[str, str] = {}
    if not environ.get("PREFECT_API_URL"):
        env["PREFECT_API_URL"] = LOCAL_PREFECT_API_URL
    if not environ.get(CLIENT_ENV) and settings.prefect_auth_file.exists():
        env[CLIENT_ENV] = read_auth_string(settings.prefect_auth_file)
    return env
