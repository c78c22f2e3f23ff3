"""`dspy-service users ...`: manage token users in the Prefect-Variable store, and the
first admin that `dspy-service up` creates.

    dspy-service users add NAME [--admin]   # prints the new token, the only time it is shown
    dspy-service users list
    dspy-service users revoke NAME
    dspy-service users rotate NAME          # prints the new token

They talk to the Prefect API at PREFECT_API_URL (default: the local `dspy-service up`
server, with its API auth string from `<home>/prefect-auth` when that file exists).
A request the store refuses (name taken, unknown user, invalid name) or an unreachable
Prefect prints `error: ...` on stderr and exits with 1. Revokes and rotations take effect
on running API replicas within DSPY_SERVICE_TOKEN_CACHE_SECONDS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from dspy_service.settings import get_settings

LOCAL_PREFECT_API = "http://127.0.0.1:4200/api"


def prefect_environment() -> None:
    """Point Prefect's client at the local `up` server unless PREFECT_API_URL says otherwise."""
    if os.environ.get("PREFECT_API_URL"):
        return
    os.environ["PREFECT_API_URL"] = LOCAL_PREFECT_API
    auth_file = get_settings().prefect_auth_file
    if auth_file.exists() and not os.environ.get("PREFECT_API_AUTH_STRING"):
        os.environ["PREFECT_API_AUTH_STRING"] = auth_file.read_text().strip()


def with_client(action: Callable[[Any], Awaitable[Any]]) -> Any:
    from prefect.client.orchestration import get_client

    async def run() -> Any:
        async with get_client() as client:
            return await action(client)

    return asyncio.run(run())


async def _listing(client: Any) -> str:
    from dspy_service import users

    rows = await users.list_users(client)
    if not rows:
        return "no users"
    width = max(len(u.username) for u in rows)
    return "\n".join(
        f"{u.username:<{width}}  {'admin' if u.admin else 'user '}  created {u.created_at or '-'}" for u in rows
    )


def cmd_users(args: argparse.Namespace) -> int:
    from dspy_service import users  # imports Prefect: only for these commands

    prefect_environment()
    actions: dict[str, Callable[[Any], Awaitable[Any]]] = {
        "add": lambda client: users.add_user(client, args.name, args.admin),
        "list": _listing,
        "revoke": lambda client: users.revoke_user(client, args.name),
        "rotate": lambda client: users.rotate_token(client, args.name),
    }
    try:
        output = with_client(actions[args.users_command])
    except (users.UserStoreError, httpx.HTTPError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.users_command in ("add", "rotate"):
        print(f"token of {args.name} (shown once, keep it secret):", file=sys.stderr)
    elif args.users_command == "revoke":
        output = f"user {args.name} revoked"
    print(output)
    return 0


def add_users_parser(sub: Any) -> None:
    parser = sub.add_parser("users", help="manage users and their API tokens")
    commands = parser.add_subparsers(dest="users_command", required=True)
    add = commands.add_parser("add", help="create a user and print their token (once)")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="may manage users and see every user's jobs")
    commands.add_parser("list", help="users and whether they are admins (never tokens)")
    revoke = commands.add_parser("revoke", help="delete a user; their token stops working")
    revoke.add_argument("name")
    rotate = commands.add_parser("rotate", help="give a user a new token (printed once); the old one stops working")
    rotate.add_argument("name")
    parser.set_defaults(func=cmd_users)


def create_first_admin() -> None:
    """`dspy-service up`: the first admin and its token file (see users.ensure_first_admin);
    runs against the stack's Prefect server (PREFECT_API_URL of the environment)."""
    from dspy_service import users

    settings = get_settings()
    if settings.auth == "off":
        return
    with_client(lambda client: users.ensure_first_admin(client, settings.admin_token_file))


def api_token(explicit: str | None = None) -> str | None:
    """The token a client command sends: given, else DSPY_SERVICE_TOKEN, else the admin-token file."""
    if explicit:
        return explicit
    if os.environ.get("DSPY_SERVICE_TOKEN"):
        return os.environ["DSPY_SERVICE_TOKEN"]
    path = get_settings().admin_token_file
    return path.read_text().strip() if path.exists() else None
