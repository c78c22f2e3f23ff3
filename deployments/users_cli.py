"""`dspy-service users ...`: manage token users in the Prefect-Variable store, and the
first admin that `dspy-service up` creates.

    dspy-service users add NAME [--admin]   # prints the new token, the only time it is shown
    dspy-service users list
    dspy-service users revoke NAME
    dspy-service users rotate NAME          # prints the new token
    dspy-service users budget NAME [--max-lm-calls N] [--max-tokens N] [--max-cost-usd X] [--clear]
                                            # the user's default budget: shown, set or removed

They talk to the Prefect API at PREFECT_API_URL (default: the local `dspy-service up`
server, with its API auth string from `<home>/prefect-auth` when that file exists).
A request the store refuses (name taken, unknown user, invalid name), a limit that is not
> 0, or an unreachable Prefect prints `error: ...` on stderr and exits with 1. Revokes and rotations take effect
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


BUDGET_OPTIONS = {"max_lm_calls": "--max-lm-calls", "max_tokens": "--max-tokens", "max_cost_usd": "--max-cost-usd"}


def shown_budget(name: str, budget: Any) -> str:
    limits = budget.limits() if budget is not None else {}
    if not limits:
        return f"{name}: no default budget"
    return f"{name}: default budget " + ", ".join(f"{key} {value:g}" for key, value in limits.items())


async def _budget(client: Any, args: argparse.Namespace) -> str:
    """Show, set (the limits given; the others unset) or remove a user's default budget."""
    from dspy_service import users
    from dspy_service.budget import Budget
    from dspy_service.budget_defaults import default_budget, set_default_budget

    if await users.get_user(client, args.name) is None:
        raise users.UnknownUser(f"user {args.name!r} not found")
    given = {key: getattr(args, key) for key in BUDGET_OPTIONS if getattr(args, key) is not None}
    if args.clear or given:
        return shown_budget(args.name, await set_default_budget(client, args.name, Budget(**given) if given else None))
    return shown_budget(args.name, await default_budget(client, args.name))


def cmd_users(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from dspy_service import users  # imports Prefect: only for these commands

    prefect_environment()
    actions: dict[str, Callable[[Any], Awaitable[Any]]] = {
        "add": lambda client: users.add_user(client, args.name, args.admin),
        "list": _listing,
        "revoke": lambda client: users.revoke_user(client, args.name),
        "rotate": lambda client: users.rotate_token(client, args.name),
        "budget": lambda client: _budget(client, args),
    }
    try:
        output = with_client(actions[args.users_command])
    except ValidationError as exc:
        error = exc.errors()[0]
        option = BUDGET_OPTIONS.get(str(error["loc"][0]), error["loc"][0])
        print(f"error: {option}: {error['msg']}", file=sys.stderr)
        return 1
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
    budget = commands.add_parser(
        "budget", help="show, set or remove a user's default budget (jobs without their own `budget` get it)"
    )
    budget.add_argument("name")
    budget.add_argument("--max-lm-calls", dest="max_lm_calls", type=int, help="LM requests a job may send")
    budget.add_argument("--max-tokens", dest="max_tokens", type=int, help="prompt + completion tokens")
    budget.add_argument("--max-cost-usd", dest="max_cost_usd", type=float, help="USD a job may spend")
    budget.add_argument("--clear", action="store_true", help="remove the default")
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
