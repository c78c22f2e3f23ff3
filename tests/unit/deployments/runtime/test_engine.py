"""The forked engine starter: the child is prepared like a fresh `python -m prefect.engine`.

Each case forks from a fresh single-threaded interpreter (tests.support.fresh_interpreter).
"""

from __future__ import annotations

import json
import os

from deployments.runtime import procfs
from deployments.runtime.engine import ForkStarter
from tests.support.fresh_interpreter import in_fresh_interpreter


def report_and_exit(env: dict[str, str]) -> int:
    """Stands in for prefect.engine in the child: says what it sees, exits with 3."""
    seen = {"env": env, "session": os.getsid(0), "pid": os.getpid(), "fds": sorted(procfs.open_fds())}
    os.write(1, json.dumps(seen).encode())
    return 3


def say_confined() -> None:
    os.write(2, b"confined;")


def start_with_an_open_pipe() -> dict:
    leaked_read, leaked_write = os.pipe()
    try:
        engine = ForkStarter(report_and_exit).start({"X": "1"}, confine=say_confined)
        output = engine.stdout.read()
        codes = (engine.wait(), engine.poll())
        engine.stdout.close()
    finally:
        os.close(leaked_read)
        os.close(leaked_write)
    return {"output": output, "codes": codes, "pid": engine.pid, "leaked": [leaked_read, leaked_write]}


def test_a_forked_engine_runs_in_a_session_of_its_own_with_only_stdio_open():
    started = in_fresh_interpreter(start_with_an_open_pipe)
    assert started["codes"] == (3, 3)
    confined, report = started["output"].split(b";", 1)
    assert confined == b"confined", "confine runs in the child before the engine"
    seen = json.loads(report)
    assert seen["env"] == {"X": "1"} and seen["pid"] == started["pid"]
    assert seen["session"] == started["pid"]
    assert not set(started["leaked"]) & set(seen["fds"])
    assert {0, 1, 2} <= set(seen["fds"])


def start_keeping_a_preloaded_fd() -> tuple[dict, int, int]:
    read, write = os.pipe()
    try:
        engine = ForkStarter(report_and_exit, keep_fds=frozenset({read})).start({}, confine=lambda: None)
        seen = json.loads(engine.stdout.read())
        engine.wait()
        engine.stdout.close()
    finally:
        os.close(read)
        os.close(write)
    return seen, read, write


def test_descriptors_the_zygote_preloaded_stay_open():
    seen, read, write = in_fresh_interpreter(start_keeping_a_preloaded_fd)
    assert read in seen["fds"] and write not in seen["fds"]


def broken_engine(_env: dict[str, str]) -> int:
    raise RuntimeError("engine could not start")


def start_a_broken_engine() -> tuple[int, bytes]:
    engine = ForkStarter(broken_engine).start({}, confine=lambda: None)
    output = engine.stdout.read()
    code = engine.wait()
    engine.stdout.close()
    return code, output


def test_an_engine_that_raises_exits_with_1_and_shows_the_traceback():
    code, output = in_fresh_interpreter(start_a_broken_engine)
    assert code == 1
    assert b"RuntimeError: engine could not start" in output
