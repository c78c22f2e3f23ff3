"""Staged result directories of warm sandboxes: their names say which zygote staged them,
and a sweep removes only the empty ones of this host whose zygote is provably gone."""

from __future__ import annotations

import dataclasses
import os

from deployments.runtime.staged_results import Owner, sweep


def staged(results, owner: Owner, name: str = "abcd1234"):
    path = results / f"{owner.prefix()}{name}"
    path.mkdir(parents=True)
    return path


def test_a_staged_name_says_who_staged_it():
    me = Owner.of(os.getpid())
    assert me is not None and me.host == os.uname().nodename
    assert Owner.parse(f"{me.prefix()}x_9y") == me
    for name in (".warm-abc123", "run-1", ".warm-", f"{me.prefix()[:-1]}"):
        assert Owner.parse(name) is None


def test_the_sweep_removes_only_what_dead_zygotes_of_this_host_staged(tmp_path):
    me = Owner.of(os.getpid())
    assert me is not None
    restarted = dataclasses.replace(me, start_ticks=me.start_ticks + 1)  # our pid, another process
    earlier_boot = dataclasses.replace(me, boot="00000000-0000-0000-0000-000000000000", pid=1)
    gone = [staged(tmp_path, restarted), staged(tmp_path, earlier_boot)]
    kept = [
        staged(tmp_path, me),  # a live zygote's
        staged(tmp_path, dataclasses.replace(restarted, host=me.host + "-other")),  # another host's
        staged(tmp_path, dataclasses.replace(restarted, pid_namespace=me.pid_namespace + 1)),  # another container
        staged(tmp_path, restarted, "full0000"),  # a job wrote into it: never deleted
    ]
    (kept[-1] / "result").write_text("data")
    legacy = tmp_path / ".warm-abc123"  # a name this module did not write
    legacy.mkdir()
    run = tmp_path / "run-1"
    run.mkdir()
    assert sorted(sweep(tmp_path)) == sorted(gone)
    assert not any(path.exists() for path in gone)
    assert all(path.exists() for path in [*kept, legacy, run])
