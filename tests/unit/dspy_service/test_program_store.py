"""The program registry's store: version numbers, aliases, owners, documents in storage.

Like tests/unit/dspy_service/test_users.py, the store's Prefect client is an in-memory
stand-in holding Variables by name (with Prefect's behaviours the store relies on:
create refuses a taken name, PATCH of a missing name is a 404, the filter is a name
prefix). Real Prefect Variables are exercised end to end in tests/integration/test_programs.py.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import httpx
import pytest
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from dspy_service import program_store
from dspy_service.contract import program_version_variable
from dspy_service.program_store import AliasInUse, CorruptDocument, ProgramNotFound, ProgramStore
from dspy_service.settings import get_settings


class Variables:
    """The Prefect client calls the store makes, on a dict."""

    def __init__(self):
        self.values: dict[str, object] = {}

    async def read_variable_by_name(self, name):
        return SimpleNamespace(name=name, value=self.values[name]) if name in self.values else None

    async def create_variable(self, variable):
        if variable.name in self.values:
            raise ObjectAlreadyExists(http_exc=Exception())
        self.values[variable.name] = variable.value

    async def delete_variable_by_name(self, name):
        if self.values.pop(name, None) is None:
            raise ObjectNotFound(http_exc=Exception())

    async def request(self, method, path, json=None, path_params=None):
        if method == "PATCH":
            name = path_params["name"]
            if name not in self.values:
                response = httpx.Response(404, request=httpx.Request("PATCH", f"http://prefect/variables/name/{name}"))
                raise httpx.HTTPStatusError("not found", request=response.request, response=response)
            self.values[name] = json["value"]
            return SimpleNamespace(json=lambda: None)
        prefix = json["variables"]["name"]["like_"].rstrip("%")
        rows = [{"name": k, "value": v} for k, v in sorted(self.values.items()) if k.startswith(prefix)]
        page = rows[json["offset"] : json["offset"] + json["limit"]]
        return SimpleNamespace(json=lambda: page)


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("DSPY_SERVICE_STORAGE_URL", str(tmp_path / "shared"))
    get_settings.cache_clear()
    yield ProgramStore(Variables())
    get_settings.cache_clear()


def document(marker: str = "a", metric: float = 0.5) -> dict:
    return {
        "signature_code": "class S(dspy.Signature): pass",
        "module_name": "predict",
        "program_state": {"predict": {"demos": [{"marker": marker}]}},
        "metrics": {"optimized_test_metric": metric, "baseline_test_metric": 0.25},
        "optimizer_name": "bootstrap",
    }


def test_versions_count_from_1_and_documents_are_copies_with_their_own_facts(store, tmp_path):
    first = run(store.register("alice", "qa", "job-1", document("a")))
    second = run(store.register("alice", "qa", "job-2", document("b", 0.75)))
    assert (first.version, second.version) == (1, 2)
    assert [e.version for e in run(store.versions("alice", "qa"))] == [1, 2]
    stored = program_store.read_document(run(store.version("alice", "qa", 2)))
    assert stored["program_state"] == {"predict": {"demos": [{"marker": "b"}]}}
    assert (stored["name"], stored["version"], stored["owner"], stored["job_id"]) == ("qa", 2, "alice", "job-2")
    assert second.public()["optimized_test_metric"] == 0.75 and second.public()["job_id"] == "job-2"
    assert second.document_url.startswith(str(tmp_path / "shared" / "programs"))


def test_owners_and_names_do_not_mix(store):
    run(store.register("alice", "qa", "j1", document()))
    run(store.register("alice", "qa2", "j2", document()))
    run(store.register("bob", "qa", "j3", document()))
    assert list(run(store.programs("alice"))) == ["qa", "qa2"]
    assert [e.job_id for e in run(store.versions("bob", "qa"))] == ["j3"]
    assert run(store.versions("mallory", "qa")) == []
    with pytest.raises(ProgramNotFound):
        run(store.version("mallory", "qa", 1))
    with pytest.raises(ProgramNotFound):
        run(store.resolve("mallory", "qa"))
    run(store.set_alias("alice", "qa", "production", 1))
    assert run(store.aliases("bob", "qa")) == {}
    assert run(store.all_aliases("alice")) == {"qa": {"production": 1}}
    assert run(store.all_aliases("bob")) == {}


def test_aliases_resolve_move_and_latest_is_the_highest_unless_set(store):
    for job in ("j1", "j2", "j3"):
        run(store.register("alice", "qa", job, document()))
    assert run(store.resolve("alice", "qa")).version == 3
    run(store.set_alias("alice", "qa", "production", 1))
    assert run(store.resolve("alice", "qa", alias="production")).version == 1
    run(store.set_alias("alice", "qa", "production", 2))  # moved
    assert run(store.resolve("alice", "qa", alias="production")).version == 2
    assert run(store.aliases("alice", "qa")) == {"production": 2}
    run(store.set_alias("alice", "qa", "latest", 1))
    assert run(store.resolve("alice", "qa")).version == 1
    assert run(store.resolve("alice", "qa", version=3)).version == 3
    with pytest.raises(ProgramNotFound, match="no alias 'staging'"):
        run(store.resolve("alice", "qa", alias="staging"))
    with pytest.raises(ProgramNotFound):
        run(store.set_alias("alice", "qa", "staging", 9))  # no version 9
    with pytest.raises(ValueError, match="invalid alias"):
        run(store.set_alias("alice", "qa", "Bad Alias", 1))
    run(store.delete_alias("alice", "qa", "production"))
    with pytest.raises(ProgramNotFound):
        run(store.delete_alias("alice", "qa", "production"))


def test_a_version_an_alias_points_to_is_not_deleted(store):
    run(store.register("alice", "qa", "j1", document()))
    run(store.set_alias("alice", "qa", "production", 1))
    with pytest.raises(AliasInUse, match="production"):
        run(store.delete_version("alice", "qa", 1))
    assert run(store.version("alice", "qa", 1)).version == 1


def test_a_deleted_version_number_is_never_handed_out_again(store):
    """Bug fixed: the store deleted the version's Variable, so the next registration got the
    same number back and a client pinned to `v2` silently got another program."""
    run(store.register("alice", "qa", "j1", document("a")))
    gone = run(store.register("alice", "qa", "j2", document("b")))
    run(store.delete_version("alice", "qa", 2))
    with pytest.raises(ProgramNotFound):
        run(store.version("alice", "qa", 2))
    assert [e.version for e in run(store.versions("alice", "qa"))] == [1]
    assert run(store.resolve("alice", "qa")).version == 1
    with pytest.raises(CorruptDocument):
        program_store.read_document(gone)  # its file is gone too
    again = run(store.register("alice", "qa", "j3", document("c")))
    assert again.version == 3
    with pytest.raises(ProgramNotFound):
        run(store.delete_version("alice", "qa", 2))


def test_deleting_every_version_removes_the_program_from_listings(store):
    run(store.register("alice", "qa", "j1", document()))
    run(store.delete_version("alice", "qa", 1))
    assert run(store.programs("alice")) == {}


def test_a_claimed_number_is_skipped_by_a_concurrent_registration(store):
    store.client.values[program_version_variable("alice", "qa", 1)] = {"claimed": "by someone else"}
    assert run(store.register("alice", "qa", "j1", document())).version == 2


def test_a_failed_document_write_leaves_no_half_registered_version(store, monkeypatch):
    """Bug fixed: a storage failure after the number was claimed left an entry with no
    document hash that every listing showed and no read could open."""

    original = program_store.write_document

    def broken(url, doc):
        raise OSError("storage unreachable")

    monkeypatch.setattr(program_store, "write_document", broken)
    with pytest.raises(OSError):
        run(store.register("alice", "qa", "j1", document()))
    assert run(store.versions("alice", "qa")) == [] and run(store.programs("alice")) == {}
    monkeypatch.setattr(program_store, "write_document", original)
    assert run(store.register("alice", "qa", "j2", document())).version == 2


def test_an_altered_or_foreign_document_is_refused(store):
    entry = run(store.register("alice", "qa", "j1", document()))
    with open(entry.document_url, "rb") as handle:
        data = json.loads(handle.read())
    assert program_store.read_document(entry)["program_state"] == data["program_state"]
    data["program_state"] = {"evil": True}
    with open(entry.document_url, "w") as handle:
        json.dump(data, handle)
    with pytest.raises(CorruptDocument, match="altered"):
        program_store.read_document(entry)
    outside = program_store.VersionEntry("qa", 1, "j1", "t", "/etc/passwd", entry.document_sha256, {})
    with pytest.raises(CorruptDocument, match="outside"):
        program_store.read_document(outside)


@pytest.mark.parametrize("name", ["", "QA", "-qa", "q a", "x" * 65, "qa/../x", "ünï"])
def test_invalid_names_are_refused_before_anything_is_stored(store, name):
    with pytest.raises(ValueError, match="invalid program name"):
        run(store.register("alice", name, "j1", document()))
    assert store.client.values == {}
