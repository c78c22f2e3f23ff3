"""A sandboxed engine's LM cache over its job's cache server (real socket, real SQLite,
real DSPy cache, the local LM): hits across jobs of a scope, none across scopes, and no
cache problem ever failing a call."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import dspy
import pytest

from deployments.runtime.lm_cache_server import LmCacheServer, store_path
from dspy_service.contract import SANDBOXED_ENV
from dspy_service.lm_cache_protocol import LM_CACHE_SOCKET_ENV
from dspy_service.schemas import JobSpec, ModelConfig
from dspy_service.settings import get_settings
from tasks.language_models import UsageMeter, build_lm, configure_job_cache
from tasks.lm_cache_client import FAILURES_BEFORE_OFF, SocketDiskCache
from tests.support.payloads import job_payload


@pytest.fixture
def home() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="lmc-", dir="/tmp") as raw:
        yield Path(raw)


@pytest.fixture(autouse=True)
def keep_dspy_cache():
    saved = dspy.cache
    yield
    dspy.cache = saved


def serve(home: Path, name: str, scope: str, max_entry_bytes: int = 1 << 20) -> LmCacheServer:
    return LmCacheServer(home / f"{name}.sock", home / scope, max_entry_bytes=max_entry_bytes,
                         size_limit_bytes=1 << 24).start()


def test_values_round_trip_as_pickles_made_and_read_on_the_engine_side(home):
    server = serve(home, "a", "scope")
    try:
        cache = SocketDiskCache(str(server.socket_path), max_entry_bytes=1 << 20)
        assert "k" not in cache and cache.get("k") is None and cache.get("k", "dflt") == "dflt"
        assert cache.set("k", {"answer": [1, 2, 3]}) is True
        assert "k" in cache and cache.get("k") == {"answer": [1, 2, 3]}
        assert cache.delete("k") is False and cache.get("k") == {"answer": [1, 2, 3]}
    finally:
        server.close()


def test_what_does_not_pickle_unpickle_or_fit_is_a_miss_never_an_error(home):
    server = serve(home, "a", "scope", max_entry_bytes=8192)
    try:
        cache = SocketDiskCache(str(server.socket_path), max_entry_bytes=8192)
        assert cache.set("lock", threading.Lock()) is False
        assert cache.set("big", b"x" * 10_000) is False and "big" not in cache
        assert cache.set("long key" * 100, 1) is False
        server.store.put(b"garbage", b"not a pickle")  # as another job of the scope could leave it
        assert cache.get("garbage") is None
        assert not cache.off
    finally:
        server.close()


def test_threads_share_the_layer(home):
    server = serve(home, "a", "scope")
    cache = SocketDiskCache(str(server.socket_path), max_entry_bytes=1 << 20)
    errors: list[str] = []

    def work(index: int) -> None:
        for round_ in range(20):
            cache.set(f"{index}-{round_}", (index, round_))
            if cache.get(f"{index}-{round_}") != (index, round_):
                errors.append(f"{index}-{round_}")

    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        server.close()
    assert errors == [] and not cache.off


def test_a_missing_or_dead_server_costs_misses_then_turns_the_layer_off(home):
    server = serve(home, "a", "scope")
    cache = SocketDiskCache(str(server.socket_path), max_entry_bytes=1 << 20, timeout=1)
    assert cache.set("k", "v") is True
    server.close()
    for _ in range(FAILURES_BEFORE_OFF):
        assert cache.get("k") is None
    assert cache.off
    assert cache.set("k", "v") is False and "k" not in cache


def sandboxed_job(monkeypatch, socket_path: Path) -> None:
    monkeypatch.setenv(SANDBOXED_ENV, "1")
    monkeypatch.setenv(LM_CACHE_SOCKET_ENV, str(socket_path))


def ask(local_lm, question: str) -> UsageMeter:
    meter = UsageMeter()
    config = ModelConfig(name="openai/local-socket-cache", base_url=local_lm.url, extra={"api_key": "unit-key"})
    build_lm(config, role="main", meter=meter, cache=True)(question)
    return meter


def test_dspy_jobs_of_a_scope_hit_each_others_calls_through_the_server(home, local_lm, monkeypatch):
    spec = JobSpec.model_validate(job_payload(local_lm.url))
    first, second, other = serve(home, "one", "scope-a"), serve(home, "two", "scope-a"), serve(home, "b", "scope-b")
    try:
        sandboxed_job(monkeypatch, first.socket_path)
        configure_job_cache(spec)
        assert isinstance(dspy.cache.disk_cache, SocketDiskCache)
        assert ask(local_lm, "What is 17 + 25?").snapshot()["total"]["calls"] == 1
        sandboxed_job(monkeypatch, second.socket_path)
        configure_job_cache(spec)  # a new job: an empty memory cache
        assert ask(local_lm, "What is 17 + 25?").snapshot()["total"]["cache_hits"] == 1
        sandboxed_job(monkeypatch, other.socket_path)
        configure_job_cache(spec)
        usage = ask(local_lm, "What is 17 + 25?").snapshot()["total"]
        assert (usage["calls"], usage["cache_hits"]) == (1, 0)
    finally:
        for server in (first, second, other):
            server.close()
    assert store_path(home / "scope-a").is_file()


def test_without_a_sandbox_the_engine_keeps_dspys_disk_cache_and_off_means_off(local_lm, monkeypatch):
    from diskcache import FanoutCache

    spec = JobSpec.model_validate(job_payload(local_lm.url))
    monkeypatch.delenv(SANDBOXED_ENV, raising=False)
    configure_job_cache(spec)
    assert isinstance(dspy.cache.disk_cache, FanoutCache)
    monkeypatch.setenv("DSPY_SERVICE_LM_CACHE", "false")
    monkeypatch.setenv(SANDBOXED_ENV, "1")
    get_settings.cache_clear()
    try:
        configure_job_cache(spec)
    finally:
        monkeypatch.delenv("DSPY_SERVICE_LM_CACHE")
        get_settings.cache_clear()
    assert not dspy.cache.enable_disk_cache and not dspy.cache.enable_memory_cache
