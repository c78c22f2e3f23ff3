"""The forked engine starter: the child is prepared like a fresh `python -m prefect.engine`."""

from __future__ import annotations

import json
import os

from deployments.runtime import procfs
from deployments.runtime.engine import ForkStarter


def report_and_exit(env: dict[str, str]) -> int:
    """Stands in for prefect.engine in the child: says what it sees, exits with 3."""
    seen = {"env": env, "session": os.getsid(0), "pid": os.getpid(), "fds": sorted(procfs.open_fds())}
    os.write(1, json.dumps(seen).encode())
    return 3


def test_a_forked_engine_runs_in_a_session_of_its_own_with_only_stdio_open():
    leaked_read, leaked_write = os.pipe()
    try:
        engine = ForkStarter(report_and_exit).start({"X": "1"}, confine=lambda: os.write(2, b"confined;"))
        output = engine.stdout.read()
        assert engine.wait() == 3 and engine.poll() == 3
        engine.stdout.close()
    finally:
        os.close(leaked_read)
        os.close(leaked_write)
    confined, report = output.split(b";", 1)
    assert confined == b"confined", "confine runs in the child before the engine"
    seen = json.loads(report)
    assert seen["env"] == {"X": "1"} and seen["pid"] == engine.pid
    assert seen["session"] == engine.pid
    assert leaked_read not in seen["fds"] and leaked_write not in seen["fds"]
    assert {0, 1, 2} <= set(seen["fds"])


def test_descriptors_the_zygote_preloaded_stay_open():
    read, write = os.pipe()
    try:
        engine = ForkStarter(report_and_exit, keep_fds=frozenset({read})).start({}, confine=lambda: None)
        seen = json.loads(engine.stdout.read())
        engine.wait()
        engine.stdout.close()
    finally:
        os.close(read)
        os.close(write)
    assert read in seen["fds"] and write not in seen["fds"]


def test_an_engine_that_raises_exits_with_1_and_shows_the_traceback(capsys):
    def broken(_env: dict[str, str]) -> int:
        raise RuntimeError("engine could not start")

    with capsys.disabled():  # the child's sys.stderr must be the real one, as in a job
        engine = ForkStarter(broken).start({}, confine=lambda: None)
    output = engine.stdout.read()
    assert engine.wait() == 1
    engine.stdout.close()
    assert b"RuntimeError: engine could not start" in output
