"""The program server's pool with real child processes (deployments/program_server/) and the
local LM over HTTP: loaded once, LRU eviction, idle timeout, concurrency per program, a
child killed mid-request, LM errors with secrets scrubbed. The loader is the only stand-in
(the trusted side's storage and credential reads are tested on the real stack)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from deployments.program_server.child import ChildExited, LoadFailed, PredictFailed, ProgramChild
from deployments.program_server.child_sandbox import child_environment_for
from deployments.program_server.pool import ProgramKey, ProgramPool
from dspy_service.client.program import build_program
from dspy_service.sandbox_check import cached_bubblewrap_problem
from dspy_service.settings import ServiceSettings
from dspy_service.testing.local_lm import ARITHMETIC_SIGNATURE_CODE, start_local_lm

SECRET = "sk-pool-test-secret-0123456789"
QUESTION = {"question": "What is 37 + 45?"}


def document(instructions: str | None = None) -> dict:
    source = {"signature_code": ARITHMETIC_SIGNATURE_CODE, "module_name": "predict", "module_kwargs": {}}
    state = {}
    if instructions:
        program = build_program(source)
        program.signature = program.signature.with_instructions(instructions)
        state = {**program.dump_state(), "lm": {"model": "openai/elsewhere", "api_base": "http://10.9.9.9/v1"}}
    return {**source, "program_state": state}


def model_config(lm_url: str) -> dict:
    return {"name": "openai/local-arithmetic", "base_url": lm_url, "temperature": 0.0, "extra": {"api_key": SECRET}}


def make_pool(tmp_path, lm_url: str, *, sandbox: str = "off", max_programs: int = 4, idle: float = 600,
              concurrency: int = 2, documents: dict | None = None, allow_lm: bool = True) -> ProgramPool:
    port = lm_url.split(":")[2].split("/")[0]
    settings = ServiceSettings(home=tmp_path, sandbox=sandbox, egress_allow=f"127.0.0.1:{port}" if allow_lm else "",
                               program_server_concurrency=concurrency, lm_num_retries=0)

    async def load(key: ProgramKey):
        return (documents or {}).get(key.name, document()), model_config(lm_url)

    return ProgramPool(load, lambda key: ProgramChild(key.label, child_environment_for(settings, os.environ), settings),
                       max_programs, idle)


def key(name: str = "arith", version: int = 1) -> ProgramKey:
    return ProgramKey("alice", name, version, f"sha-{name}-{version}")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def run(coro):
    return asyncio.run(coro)


def test_a_program_loads_once_and_predicts_deterministically_with_usage(tmp_path, local_lm):
    async def scenario():
        pool = make_pool(tmp_path, local_lm.url)
        try:
            first = await pool.predict(key(), QUESTION)
            second = await pool.predict(key(), QUESTION)
            assert first["outputs"] == second["outputs"] and set(first["outputs"]) == {"answer"}
            assert first["usage"]["calls"] == 1 and first["usage"]["prompt_tokens"] > 0
            assert pool.loads == 1
        finally:
            await pool.close()

    run(scenario())


def test_instructions_of_the_state_are_used_and_a_saved_lm_is_not(tmp_path, local_lm):
    """The local LM answers better with a cue phrase in the instructions; the state's own
    LM (with a key) is stripped: the prediction goes to the configured local LM."""
    plain, cued = document(), document("Think step by step and double-check the exact answer.")

    async def scenario():
        pool = make_pool(tmp_path, local_lm.url, documents={"plain": plain, "cued": cued})
        try:
            questions = [{"question": f"What is {a} + {b}?"} for a, b in [(37, 45), (12, 9), (61, 27), (5, 88)]]
            answers = {}
            for name in ("plain", "cued"):
                answers[name] = [(await pool.predict(key(name), q))["outputs"]["answer"] for q in questions]
            assert answers["plain"] != answers["cued"]
        finally:
            await pool.close()

    run(scenario())


def test_least_recently_used_is_closed_beyond_the_count(tmp_path, local_lm):
    async def scenario():
        pool = make_pool(tmp_path, local_lm.url, max_programs=2)
        try:
            for version in (1, 2):
                await pool.predict(key(version=version), QUESTION)
            first_pid = pool.children[key(version=1)].pid
            await pool.predict(key(version=1), QUESTION)  # v1 is now the most recently used
            second_pid = pool.children[key(version=2)].pid
            await pool.predict(key(version=3), QUESTION)
            assert list(pool.children) == [key(version=1), key(version=3)]
            assert gone(second_pid) and not gone(first_pid)
        finally:
            await pool.close()
        assert gone(first_pid)

    run(scenario())


def test_an_idle_program_is_closed_and_loaded_again_on_use(tmp_path, local_lm):
    async def scenario():
        pool = make_pool(tmp_path, local_lm.url, idle=0.5)
        reaper = asyncio.create_task(pool.reap_forever())
        try:
            await pool.predict(key(), QUESTION)
            pid = pool.children[key()].pid
            await asyncio.sleep(1.5)
            assert not pool.children and gone(pid)
            await pool.predict(key(), QUESTION)
            assert pool.loads == 2
        finally:
            reaper.cancel()
            await pool.close()

    run(scenario())


def test_predictions_in_flight_per_program_are_bounded(tmp_path, local_lm):
    local_lm.set_delay(300)

    async def scenario():
        pool = make_pool(tmp_path, local_lm.url, concurrency=2)
        try:
            await pool.predict(key(), QUESTION)  # loaded (its load time is not measured)
            child = pool.children[key()]
            peak = 0

            async def watch():
                nonlocal peak
                while True:
                    peak = max(peak, child.in_flight)
                    await asyncio.sleep(0.01)

            watcher = asyncio.create_task(watch())
            started = time.monotonic()
            await asyncio.gather(*(pool.predict(key(), {"question": f"What is {i} + 1?"}) for i in range(4)))
            elapsed = time.monotonic() - started
            watcher.cancel()
            assert peak == 2
            assert 0.55 <= elapsed < 1.5, elapsed  # two rounds of two 300 ms calls
        finally:
            await pool.close()

    try:
        run(scenario())
    finally:
        local_lm.set_delay(0)


def test_a_child_killed_mid_request_fails_that_request_and_the_next_loads_a_fresh_one(tmp_path, local_lm):
    async def scenario():
        pool = make_pool(tmp_path, local_lm.url)
        try:
            await pool.predict(key(), QUESTION)
            child = pool.children[key()]
            local_lm.set_delay(3000)
            slow = asyncio.create_task(pool.predict(key(), {"question": "What is 3 + 4?"}))
            await asyncio.sleep(0.5)
            os.kill(child.pid, signal.SIGKILL)
            with pytest.raises(ChildExited) as raised:
                await slow
            assert str(raised.value) == "program server for arith v1 exited: killed by SIGKILL"
            assert key() not in pool.children
            local_lm.set_delay(0)
            answer = await pool.predict(key(), QUESTION)
            assert answer["outputs"]["answer"] and pool.loads == 2
        finally:
            local_lm.set_delay(0)
            await pool.close()

    run(scenario())


def test_an_lm_error_is_reported_as_such_and_the_child_keeps_serving(tmp_path, local_lm):
    async def scenario():
        pool = make_pool(tmp_path, local_lm.url)
        try:
            await pool.predict(key(), QUESTION)
            local_lm.set_faults(1, status=400)
            with pytest.raises(PredictFailed) as raised:
                await pool.predict(key(), QUESTION)
            assert raised.value.kind == "lm" and SECRET not in raised.value.message
            assert (await pool.predict(key(), QUESTION))["outputs"]["answer"]
            assert pool.loads == 1
        finally:
            local_lm.set_faults(0)
            await pool.close()

    run(scenario())


def test_a_program_that_cannot_be_built_fails_its_load_with_the_reason(tmp_path, local_lm):
    broken = {**document(), "signature_code": "raise RuntimeError('no signature here')"}

    async def scenario():
        pool = make_pool(tmp_path, local_lm.url, documents={"broken": broken})
        try:
            with pytest.raises(LoadFailed, match="no signature here"):
                await pool.predict(key("broken"), QUESTION)
            assert not pool.children
        finally:
            await pool.close()

    run(scenario())


@pytest.mark.skipif(bool(cached_bubblewrap_problem(65534)), reason="bubblewrap cannot run here")
def test_in_the_sandbox_the_child_reaches_its_model_and_is_killed_by_its_host_pid(tmp_path, local_lm):
    async def scenario():
        pool = make_pool(tmp_path, local_lm.url, sandbox="on")
        try:
            answer = await pool.predict(key(), QUESTION)
            assert answer["outputs"]["answer"]
            child = pool.children[key()]
            assert child.sandboxed and child.pid != child.process.pid  # the program, not bubblewrap
            with open(f"/proc/{child.pid}/status") as status:
                nspid = next(line.split()[1:] for line in status if line.startswith("NSpid:"))
            assert len(nspid) == 2  # a pid namespace of its own
            local_lm.set_delay(2000)
            slow = asyncio.create_task(pool.predict(key(), QUESTION))
            await asyncio.sleep(0.5)
            os.kill(child.pid, signal.SIGKILL)
            with pytest.raises(ChildExited, match="exited: killed by SIGKILL"):
                await slow
        finally:
            local_lm.set_delay(0)
            await pool.close()

    run(scenario())


@pytest.mark.skipif(bool(cached_bubblewrap_problem(65534)), reason="bubblewrap cannot run here")
def test_in_the_sandbox_the_egress_policy_decides_what_the_program_reaches(tmp_path):
    # An LM of its own: the shared one's counters also see late calls of earlier tests' children.
    with start_local_lm() as lm:

        async def scenario():
            pool = make_pool(tmp_path, lm.url, sandbox="on", allow_lm=False)  # loopback not allow-listed
            try:
                with pytest.raises(PredictFailed) as raised:
                    await pool.predict(key(), QUESTION)
                assert raised.value.kind == "lm" and "denied by the job's egress policy" in raised.value.message
            finally:
                await pool.close()

        run(scenario())
        assert lm.stats()["calls"] == 0
