"""A user's default budget: applied whole to each job and schedule of theirs whose body
has no `budget` key, when it is created (a schedule keeps the default it was created with).

It is a default, not a ceiling: a body's own `budget` (even `null` or `{}`) replaces it, as
`notify_url` replaces the default notify_url. Admins set it for a user (`PUT
/users/{name}/budget`, `dspy-service users budget NAME ...`), users for themselves (`PUT
/users/me/budget`). Stored as the Prefect Variable `contract.budget_default_variable(owner)`
holding the Budget's JSON, so it works on SQLite and PostgreSQL and for every API replica.

How it fails: a stored value that no longer validates reads as no default (None); Prefect's
transport and HTTP errors propagate. Bad limits never reach the store: `Budget` refuses
them (pydantic, naming the field).
"""

from __future__ import annotations

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import VariableCreate, VariableUpdate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from pydantic import ValidationError

from dspy_service.budget import Budget
from dspy_service.contract import budget_default_variable

BUDGET_TAG = "dspy-service-budget"


async def default_budget(client: PrefectClient, owner: str) -> Budget | None:
    """The owner's default budget (None: none, or one with no limit set)."""
    variable = await client.read_variable_by_name(budget_default_variable(owner))
    if variable is None or not isinstance(variable.value, dict):
        return None
    try:
        budget = Budget.model_validate(variable.value)
    except ValidationError:
        return None
    return budget if budget.limits() else None


async def set_default_budget(client: PrefectClient, owner: str, budget: Budget | None) -> Budget | None:
    """Store the owner's default budget; None (or a budget with no limit) removes it.
    Returns what is stored now."""
    name = budget_default_variable(owner)
    if budget is None or not budget.limits():
        try:
            await client.delete_variable_by_name(name)
        except ObjectNotFound:
            pass
        return None
    value = budget.model_dump(mode="json", exclude_none=True)
    if await client.read_variable_by_name(name) is None:
        try:
            await client.create_variable(VariableCreate(name=name, value=value, tags=[BUDGET_TAG]))
            return budget
        except ObjectAlreadyExists:
            pass
    await client.update_variable(VariableUpdate(name=name, value=value))
    return budget
