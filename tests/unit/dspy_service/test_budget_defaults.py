"""A user's default budget in its Prefect Variable (an in-memory stand-in of the client;
the real Variables are exercised in tests/integration/test_budgets.py)."""

from __future__ import annotations

import asyncio

from dspy_service.budget import Budget
from dspy_service.budget_defaults import default_budget, set_default_budget
from dspy_service.contract import budget_default_variable
from tests.support.memory_prefect import Prefect


def test_a_default_is_stored_replaced_and_removed_per_user():
    prefect = Prefect()
    assert asyncio.run(default_budget(prefect, "alice")) is None
    asyncio.run(set_default_budget(prefect, "alice", Budget(max_lm_calls=50)))
    asyncio.run(set_default_budget(prefect, "alice", Budget(max_cost_usd=1.5)))  # replaced whole
    assert asyncio.run(default_budget(prefect, "alice")) == Budget(max_cost_usd=1.5)
    assert asyncio.run(default_budget(prefect, "bob")) is None
    assert prefect.variables[budget_default_variable("alice")] == {"max_cost_usd": 1.5}
    assert asyncio.run(set_default_budget(prefect, "alice", Budget())) is None  # no limit: no default
    assert budget_default_variable("alice") not in prefect.variables
    asyncio.run(set_default_budget(prefect, "alice", None))  # removing nothing is fine


def test_a_stored_value_that_no_longer_validates_reads_as_no_default():
    prefect = Prefect()
    prefect.variables[budget_default_variable("alice")] = {"max_lm_calls": -1}
    assert asyncio.run(default_budget(prefect, "alice")) is None


def test_a_revoked_users_default_goes_with_them():
    from dspy_service import users

    prefect = Prefect()
    asyncio.run(users.add_user(prefect, "alice"))
    asyncio.run(set_default_budget(prefect, "alice", Budget(max_lm_calls=50)))
    asyncio.run(users.revoke_user(prefect, "alice"))
    asyncio.run(users.add_user(prefect, "alice"))
    assert asyncio.run(default_budget(prefect, "alice")) is None
