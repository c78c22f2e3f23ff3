"""The champion gate's registration step: what the decision records, and that a run whose
registration fails is not promoted (the champion and the alias move together)."""

from __future__ import annotations

from contextlib import asynccontextmanager, contextmanager

import httpx
import pytest

from dspy_service.contract import CHAMPION_REGISTRATION_ROUTE, SANDBOXED_ENV
from tasks import champion, champion_registration
from tasks.champion import ChampionDecision, register_promoted
from tasks.champion_registration import RegistrationFailed, register_champion
from tests.support.memory_prefect import RUN, Prefect, in_memory_prefect, program

REGISTERED = {"program": "nightly-qa", "version": 2, "alias": "production"}


def promoted() -> ChampionDecision:
    return ChampionDecision(promoted=True, reason="beats the champion", challenger_score=0.8)


def test_a_registered_run_records_its_version(monkeypatch):
    monkeypatch.setattr(champion, "register_champion", lambda job_id, program: (REGISTERED, "registered as v2"))
    decision = promoted()
    register_promoted(decision, "job", {})
    assert decision.promoted and decision.as_details()["registered"] == REGISTERED
    assert decision.registered_reason == "registered as v2"


def test_a_schedule_without_register_as_any_more_still_promotes(monkeypatch):
    monkeypatch.setattr(champion, "register_champion", lambda job_id, program: (None, "no register_as"))
    decision = promoted()
    register_promoted(decision, "job", {})
    assert decision.promoted and decision.registered is None and decision.registered_reason == "no register_as"


def test_a_run_that_cannot_be_registered_is_not_promoted(monkeypatch):
    def refuse(job_id, program):
        raise RegistrationFailed("the storage is read-only")

    monkeypatch.setattr(champion, "register_champion", refuse)
    decision = promoted()
    register_promoted(decision, "job", {})
    assert not decision.promoted and decision.registered is None
    assert decision.registered_reason == "registration failed: the storage is read-only"
    assert decision.reason.startswith("beats the champion; but it could not be registered")


class Proxy:
    """The job-scoped proxy's registration route, as a sandboxed job's client sees it."""

    def __init__(self, status: int, answer: dict):
        self.status, self.answer, self.sent = status, answer, []

    def request(self, method, path, json=None):
        assert (method, path) == ("POST", CHAMPION_REGISTRATION_ROUTE)
        self.sent.append(json)
        request = httpx.Request(method, f"http://proxy/api{path}")
        return httpx.Response(self.status, json=self.answer, request=request).raise_for_status()


@pytest.mark.parametrize(
    ("status", "answer", "expected"),
    [
        (200, {"registered": REGISTERED, "reason": "registered"}, (REGISTERED, "registered")),
        (200, {"registered": None, "reason": "no register_as"}, (None, "no register_as")),
        (422, {"detail": "the run is not a run of schedule x"}, RegistrationFailed("not a run of schedule x")),
        (403, {"detail": "sandbox: only inside the champion gate"}, RegistrationFailed("only inside the champion")),
        (502, {"detail": "sandbox: the run could not be registered"}, RegistrationFailed("could not be registered")),
    ],
)
def test_a_sandboxed_job_asks_the_proxy(monkeypatch, status, answer, expected):
    proxy = Proxy(status, answer)

    @contextmanager
    def client():
        yield proxy

    monkeypatch.setenv(SANDBOXED_ENV, "1")
    monkeypatch.setattr(champion_registration, "sync_prefect_client", client)
    if isinstance(expected, Exception):
        with pytest.raises(RegistrationFailed, match=str(expected)):
            register_champion("job", {"program_artifact": {}})
    else:
        assert register_champion("job", {"program_artifact": {}}) == expected
    assert proxy.sent == [{"program_artifact": {}}]  # the job's program only: no program name, no owner


@pytest.fixture
def prefect(tmp_path, monkeypatch) -> Prefect:
    yield from in_memory_prefect(tmp_path, monkeypatch)


def test_an_engine_outside_the_sandbox_registers_with_the_same_code(monkeypatch, prefect):
    """DSPY_SERVICE_SANDBOX=off: the engine calls dspy_service/schedule_registration.py
    itself, with its own Prefect client (here the in-memory one)."""
    import prefect as prefect_package

    @asynccontextmanager
    async def client():
        yield prefect

    monkeypatch.delenv(SANDBOXED_ENV, raising=False)
    monkeypatch.setattr(prefect_package, "get_client", client)
    registered, _ = register_champion(RUN, program())
    assert registered == {"program": "nightly-qa", "version": 1, "alias": "production"}
    prefect.runs[RUN]["state"] = {"type": "COMPLETED", "name": "Completed"}
    with pytest.raises(RegistrationFailed, match="not Running"):
        register_champion(RUN, program())
