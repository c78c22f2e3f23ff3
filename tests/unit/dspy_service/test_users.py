"""The user store: token format, hashing, verification, and the first admin.

The store's Prefect client is an in-memory stand-in holding Variables by name (the
real Prefect Variables are exercised end to end in tests/integration/test_identity.py).
"""

from __future__ import annotations

import asyncio
import re
import stat
from types import SimpleNamespace

import pytest
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from dspy_service import prefect_pages, users
from dspy_service.contract import TOKEN_PREFIX, user_variable


class Variables:
    """The Variable calls the store makes, on a dict."""

    def __init__(self):
        self.values: dict[str, object] = {}

    async def read_variable_by_name(self, name):
        return SimpleNamespace(name=name, value=self.values[name]) if name in self.values else None

    async def create_variable(self, variable):
        if variable.name in self.values:
            raise ObjectAlreadyExists(http_exc=Exception())
        self.values[variable.name] = variable.value

    async def update_variable(self, variable):
        self.values[variable.name] = variable.value

    async def delete_variable_by_name(self, name):
        if self.values.pop(name, None) is None:
            raise ObjectNotFound(http_exc=Exception())

    async def request(self, method, path, json):
        prefix = json["variables"]["name"]["like_"].rstrip("%")
        rows = [{"name": k, "value": v} for k, v in sorted(self.values.items()) if k.startswith(prefix)]
        page = rows[json["offset"] : json["offset"] + json["limit"]]
        return SimpleNamespace(json=lambda: page)


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_token_names_its_user_and_carries_32_random_bytes():
    token = users.new_token("alice")
    prefix, name, secret = token.split(".")
    assert (prefix, name) == (TOKEN_PREFIX, "alice")
    assert len(secret) >= 43 and re.fullmatch(r"[A-Za-z0-9_-]+", secret)  # 32 bytes, URL-safe base64
    assert users.new_token("alice") != token
    assert users.token_username(token) == "alice"


@pytest.mark.parametrize("token", ["", "dss", "dss.alice", "dss.alice.", "xyz.alice.abc", "dss.Alice.abc", "dss.a.b.c"])
def test_malformed_tokens_name_nobody(token):
    assert users.token_username(token) is None


def test_only_the_hash_is_stored_and_the_token_verifies():
    store = Variables()
    token = run(users.add_user(store, "alice"))
    record = store.values[user_variable("alice")]
    assert token not in str(record) and record["token_sha256"] == users.token_hash(token)
    assert run(users.verify_token(store, token)) == users.User("alice", False, record["created_at"])


def test_wrong_revoked_and_rotated_tokens_do_not_verify():
    store = Variables()
    token = run(users.add_user(store, "alice"))
    assert run(users.verify_token(store, token[:-1] + ("A" if token[-1] != "A" else "B"))) is None
    assert run(users.verify_token(store, token.replace("alice", "bob"))) is None
    fresh = run(users.rotate_token(store, "alice"))
    assert run(users.verify_token(store, token)) is None
    assert run(users.verify_token(store, fresh)).username == "alice"
    run(users.revoke_user(store, "alice"))
    assert run(users.verify_token(store, fresh)) is None


def test_a_record_of_another_name_never_matches():
    token = users.new_token("alice")
    assert users.record_matches(users.user_record("bob", True, token), "alice", token) is None


def test_store_errors():
    store = Variables()
    run(users.add_user(store, "alice"))
    with pytest.raises(users.UserExists):
        run(users.add_user(store, "alice"))
    with pytest.raises(users.UnknownUser):
        run(users.revoke_user(store, "bob"))
    with pytest.raises(users.UnknownUser):
        run(users.rotate_token(store, "bob"))
    with pytest.raises(users.UnknownUser):
        run(users.revoke_user(store, "Not A Name"))
    with pytest.raises(users.InvalidUsername):
        run(users.add_user(store, "Alice Smith"))


def test_list_users_pages_through_the_store_and_shows_no_hashes(monkeypatch):
    monkeypatch.setattr(prefect_pages, "PAGE_LIMIT", 2)  # three users: two pages and an empty one
    store = Variables()
    store.values["dspy-champion-x"] = {"job_id": "1"}
    for name in ("carol", "alice", "bob"):
        run(users.add_user(store, name, admin=name == "bob"))
    listed = run(users.list_users(store))
    assert [(u.username, u.admin) for u in listed] == [("alice", False), ("bob", True), ("carol", False)]
    assert "token_sha256" not in listed[0].public()


def test_the_first_admin_is_created_once_with_a_private_token_file(tmp_path):
    store = Variables()
    path = tmp_path / "home" / "admin-token"
    assert run(users.ensure_first_admin(store, path)) == path
    token = path.read_text().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    admin = run(users.verify_token(store, token))
    assert (admin.username, admin.admin) == ("admin", True)
    assert run(users.ensure_first_admin(store, path)) == path  # a later start keeps it
    assert path.read_text().strip() == token


def test_no_first_admin_when_an_admin_exists(tmp_path):
    store = Variables()
    run(users.add_user(store, "root", admin=True))
    path = tmp_path / "admin-token"
    assert run(users.ensure_first_admin(store, path)) is None
    assert not path.exists() and user_variable("admin") not in store.values
