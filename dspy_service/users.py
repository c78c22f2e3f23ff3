"""The user store: one Prefect Variable per token user (no server or table of our own).

A user is the Variable `contract.user_variable(name)` holding `{username, admin,
token_sha256, created_at}`. It works wherever Prefect does (SQLite, PostgreSQL) and for any
number of API replicas, which all read the same Variables. Tokens read
`<TOKEN_PREFIX>.<username>.<secret>` (secret: 32 random bytes, URL-safe), so checking one
is a single read by name; only the token's SHA-256 is stored, and hashes are compared in
constant time.

How it fails: `UserExists` (add a name in use), `UnknownUser` (revoke/rotate a name not
in the store), `InvalidUsername` (a name outside `contract.USERNAME_PATTERN`);
`verify_token` never raises for a malformed or unknown token, it returns None. Prefect's
transport and HTTP errors propagate.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import VariableCreate, VariableUpdate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from dspy_service.contract import (
    TOKEN_PREFIX,
    USER_VARIABLE_PREFIX,
    USERNAME_PATTERN,
    budget_default_variable,
    user_variable,
)
from dspy_service.prefect_pages import read_in_pages

FIRST_ADMIN = "admin"
USER_TAG = "dspy-service-user"  # on every user Variable (shown in the Prefect UI's Variables page)


class UserStoreError(ValueError):
    """A request the user store cannot carry out (see the subclasses)."""


class UserExists(UserStoreError):
    pass


class UnknownUser(UserStoreError):
    pass


class InvalidUsername(UserStoreError):
    pass


@dataclass(frozen=True)
class User:
    """A user as the store shows it (never the token or its hash)."""

    username: str
    admin: bool
    created_at: str | None = None

    def public(self) -> dict[str, Any]:
        return {"username": self.username, "admin": self.admin, "created_at": self.created_at}


# -- tokens (pure) ----------------------------------------------------------------------------
def check_username(name: str) -> str:
    if not isinstance(name, str) or not re.fullmatch(USERNAME_PATTERN, name):
        raise InvalidUsername(
            f"invalid username {name!r}: 1-64 characters, lowercase letters, digits, '-' and '_', "
            "starting with a letter or digit"
        )
    return name


def new_token(username: str) -> str:
    return f"{TOKEN_PREFIX}.{username}.{secrets.token_urlsafe(32)}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_username(token: str) -> str | None:
    """The username a well-formed token names (None for anything else)."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not parts[2]:
        return None
    return parts[1] if re.fullmatch(USERNAME_PATTERN, parts[1]) else None


def record_matches(record: Any, username: str, token: str) -> User | None:
    """The user a stored record describes, when `token` is theirs (constant-time compare)."""
    if not isinstance(record, dict) or record.get("username") != username:
        return None
    stored = record.get("token_sha256")
    if not isinstance(stored, str) or not hmac.compare_digest(stored, token_hash(token)):
        return None
    return User(username, bool(record.get("admin")), record.get("created_at"))


def user_record(username: str, admin: bool, token: str) -> dict[str, Any]:
    return {
        "username": username,
        "admin": admin,
        "token_sha256": token_hash(token),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


# -- the store (Prefect Variables) --------------------------------------------------------------
async def _record(client: PrefectClient, username: str) -> dict[str, Any] | None:
    variable = await client.read_variable_by_name(user_variable(username))
    return variable.value if variable is not None and isinstance(variable.value, dict) else None


async def get_user(client: PrefectClient, username: str) -> User | None:
    """The user of this name, or None (no such user, or a name outside the pattern)."""
    record = await _record(client, username) if re.fullmatch(USERNAME_PATTERN, username) else None
    if record is None:
        return None
    return User(username, bool(record.get("admin")), record.get("created_at"))


async def add_user(client: PrefectClient, username: str, admin: bool = False) -> str:
    """Create the user; returns their token (shown this once)."""
    check_username(username)
    token = new_token(username)
    try:
        await client.create_variable(
            VariableCreate(name=user_variable(username), value=user_record(username, admin, token), tags=[USER_TAG])
        )
    except ObjectAlreadyExists:
        raise UserExists(f"user {username!r} exists already") from None
    return token


async def list_users(client: PrefectClient) -> list[User]:
    async def read_page(limit: int, offset: int) -> list[dict[str, Any]]:
        body = {"variables": {"name": {"like_": f"{USER_VARIABLE_PREFIX}%"}}, "limit": limit, "offset": offset}
        return (await client.request("POST", "/variables/filter", json=body)).json()

    users = [
        User(value["username"], bool(value.get("admin")), value.get("created_at"))
        for variable in await read_in_pages(read_page, limit=None)
        if isinstance(value := variable.get("value"), dict)
        and variable.get("name") == user_variable(str(value.get("username")))
    ]
    return sorted(users, key=lambda u: u.username)


async def revoke_user(client: PrefectClient, username: str) -> None:
    """Delete the user and their default budget: their token stops working (on other API
    replicas within their token cache time); a new user of that name starts without one."""
    if not re.fullmatch(USERNAME_PATTERN, username):
        raise UnknownUser(f"user {username!r} not found")
    try:
        await client.delete_variable_by_name(user_variable(username))
    except ObjectNotFound:
        raise UnknownUser(f"user {username!r} not found") from None
    try:
        await client.delete_variable_by_name(budget_default_variable(username))
    except ObjectNotFound:
        pass


async def rotate_token(client: PrefectClient, username: str) -> str:
    """A new token for the user; the old one stops working."""
    record = await _record(client, username) if re.fullmatch(USERNAME_PATTERN, username) else None
    if record is None:
        raise UnknownUser(f"user {username!r} not found")
    token = new_token(username)
    fresh = {**record, "token_sha256": token_hash(token)}
    await client.update_variable(VariableUpdate(name=user_variable(username), value=fresh))
    return token


async def verify_token(client: PrefectClient, token: str) -> User | None:
    """The user `token` belongs to, or None (malformed, unknown, revoked or rotated)."""
    username = token_username(token)
    if username is None:
        return None
    return record_matches(await _record(client, username), username, token)


async def ensure_first_admin(client: PrefectClient, token_file: Path) -> Path | None:
    """When the store has no admin, create the user `admin` and write its token to
    `token_file` (mode 0600). Idempotent: once an admin exists nothing changes (a token
    file that still verifies is kept; no token is rotated behind another host's back).
    Returns the file's path when it holds a working admin token, else None."""
    if token_file.exists():
        current = token_file.read_text().strip()
        user = await verify_token(client, current) if current else None
        if user is not None and user.admin:
            return token_file
    if any(user.admin for user in await list_users(client)):
        return None
    try:
        token = await add_user(client, FIRST_ADMIN, admin=True)
    except UserExists:  # a non-admin named `admin`, or a concurrent first start
        return None
    write_private(token_file, token + "\n")
    return token_file


def write_private(path: Path, text: str) -> None:
    """Write `text` to a file only its owner can read (its directory is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    os.chmod(path, 0o600)
