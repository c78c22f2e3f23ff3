"""The program registry from Python: `Client.programs`.

    client.programs.register("qa", job.id)              # {"name": "qa", "version": 1, ...}
    client.programs.set_alias("qa", "production", 1)
    client.programs.export("qa", 1, "qa-v1.zip")        # then load_program("qa-v1.zip")

Each method is one HTTP call (export and info: one or two) and returns the API's JSON.
How it fails: like every client call (errors.py): `NotFound` for a program, version,
alias or job that is not yours, `Conflict` for deleting a version an alias points to,
`InvalidRequest` naming the field for a bad name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from dspy_service.client.connection import Connection, checked
from dspy_service.client.errors import ServiceUnavailable


def _path(name: str, *rest: str | int) -> str:
    return "/".join(["/programs", quote(name, safe=""), *(quote(str(part), safe="") for part in rest)])


class Programs:
    """Your registered programs (versions are immutable, aliases move)."""

    def __init__(self, connection: Connection):
        self._connection = connection

    def register(self, name: str, job_id: str) -> dict[str, Any]:
        """Register a successful job's program as the next version of `name`."""
        return self._connection.request("POST", "/programs", json={"name": name, "job_id": job_id})

    def list(self) -> list[dict[str, Any]]:
        return self._connection.request("GET", "/programs")["items"]

    def get(self, name: str) -> dict[str, Any]:
        """{name, latest_version, versions, aliases}."""
        return self._connection.request("GET", _path(name))

    def version(self, name: str, version: int) -> dict[str, Any]:
        """The version's manifest (everything stored but the program state)."""
        return self._connection.request("GET", _path(name, "versions", version))

    def info(self, name: str, version: int | None = None, alias: str | None = None) -> dict[str, Any]:
        """Fields, instructions and demo count of a version (default `latest`)."""
        params = {key: value for key, value in {"version": version, "alias": alias}.items() if value is not None}
        return self._connection.request("GET", _path(name, "info"), params=params or None)

    def set_alias(self, name: str, alias: str, version: int) -> dict[str, Any]:
        return self._connection.request("PUT", _path(name, "aliases", alias), json={"version": version})

    def delete_alias(self, name: str, alias: str) -> dict[str, Any]:
        return self._connection.request("DELETE", _path(name, "aliases", alias))

    def delete_version(self, name: str, version: int) -> dict[str, Any]:
        return self._connection.request("DELETE", _path(name, "versions", version))

    def export(
        self, name: str, version: int | None = None, path: str | Path | None = None, *, alias: str | None = None
    ) -> Path:
        """Download a version's zip (no version: the one `alias`, default `latest`, names) to
        `path` (default `<name>-v<version>.zip` in the current directory); returns the path."""
        if version is None:
            version = int(self.info(name, alias=alias)["version"])
        target = Path(path) if path is not None else Path(f"{name}-v{version}.zip")
        connection = self._connection
        try:
            response = checked(connection.http.get(_path(name, "versions", version, "export")))
        except httpx.TransportError as exc:
            raise ServiceUnavailable(None, f"cannot reach the service at {connection.base_url}: {exc}") from exc
        target.write_bytes(response.content)
        return target
