"""Two test streams at once (pytest-xdist, `-n 2 --dist loadscope`), no stack started twice.

Rule: tests that share a costly fixture run in one stream, in one piece. A test's group is
where the widest-scoped fixture it shares with other tests is defined (a package or session
fixture of a conftest below the root one: a stack, the real model, the engine's Prefect
harness), with that fixture's parameter (`tests/integration[sqlite]` and
`tests/integration[postgres]` are two groups: each starts one stack). Tests that share
nothing wider than their module are grouped by module. The root conftest's session
fixtures (the local LM, the webhook receiver) are cheap and per process: each stream
starts its own.

How groups reach the scheduler: only workers collect (they know fixtures), only the
controller schedules (it knows node ids). Each worker writes its {node id: group} to a
file the controller named in its `workerinput`; `GroupsLongestFirst` reads it once all
workers have collected. (xdist's own `xdist_group` mark does not work here: xdist 3.8
renames the test's node id, which pytest 9 no longer lets it do.)

`GroupsLongestFirst` hands the groups out longest first (longest-processing-time
scheduling): groups that start processes (a test of theirs is marked `integration`)
before the others, each kind by number of tests, so the unit tests' many small modules fill
the gaps at the end. Without `-n`, none of this applies: one stream, pytest's order.

How it fails: a group file that is missing or unreadable stops the run (the controller
raises: it cannot keep stacks apart without it). A costly session fixture added to the
root conftest would start once per stream (twice): define those below it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from xdist.scheduler import LoadScopeScheduling

from tests.support.markers import INTEGRATION

GROUPS_INPUT = "stream_groups_file"  # the workerinput key naming the group file
PROCESSES, IN_PROCESS = "processes", "in-process"
WIDER_FIRST = {"session": 0, "package": 1}


def module_of(nodeid: str) -> str:
    return nodeid.split("::")[0]


def shared_group(item: pytest.Item, root: str) -> str:
    """The group of `item`: see the module's rule."""
    info = getattr(item, "_fixtureinfo", None)
    shared = []
    if info is not None:
        for name in item.fixturenames:
            definition = (info.name2fixturedefs.get(name) or (None,))[-1]
            if definition is not None and definition.scope in WIDER_FIRST and definition.baseid not in ("", root):
                shared.append((WIDER_FIRST[definition.scope], definition.baseid, name))
    if not shared:
        return module_of(item.nodeid)
    _, where, _ = min(shared)
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    values = sorted({str(params[name]) for _, _, name in shared if name in params})
    return f"{where}[{'-'.join(values)}]" if values else where


def groups_of(items: list[pytest.Item], root: str) -> dict[str, str]:
    """{node id: "kind:group"}; a group's kind is `processes` when any of its tests is
    marked `integration`."""
    groups = {item.nodeid: shared_group(item, root) for item in items}
    starting = {groups[item.nodeid] for item in items if item.get_closest_marker(INTEGRATION)}
    return {nodeid: f"{PROCESSES if group in starting else IN_PROCESS}:{group}" for nodeid, group in groups.items()}


def write_groups(path: Path, groups: dict[str, str]) -> None:
    """Whole or not at all: the controller may read it as soon as the worker reports in."""
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(groups))
    partial.replace(path)


class GroupsLongestFirst(LoadScopeScheduling):
    """xdist's scope scheduling over our groups, the longest group left first."""

    groups: dict[str, str] | None = None

    def schedule(self) -> None:
        if self.groups is None:  # xdist schedules once every worker has collected
            self.groups = self._read_groups()
        super().schedule()

    def _read_groups(self) -> dict[str, str]:
        groups: dict[str, str] = {}
        for node in self.nodes:
            path = Path(node.workerinput[GROUPS_INPUT])
            try:
                groups.update(json.loads(path.read_text()))
            except (OSError, ValueError) as error:
                raise RuntimeError(f"test streams: {node.gateway.id} wrote no groups ({path}): {error}") from None
        return groups

    def _split_scope(self, nodeid: str) -> str:
        return (self.groups or {}).get(nodeid) or f"{IN_PROCESS}:{module_of(nodeid)}"

    def _assign_work_unit(self, node) -> None:
        longest = min(self.workqueue, key=lambda group: expected_length(group, len(self.workqueue[group])))
        self.workqueue.move_to_end(longest, last=False)
        super()._assign_work_unit(node)


def expected_length(group: str, tests: int) -> tuple[int, int]:
    """Sort key, smallest first: groups that start processes, then by number of tests."""
    return (0 if group.startswith(f"{PROCESSES}:") else 1, -tests)
