"""Two test streams at once (pytest-xdist), with no stack started twice.

Rule: tests that share a costly fixture run in one stream, in one piece. A test's group is
where the widest-scoped fixture it shares with other tests is defined (a package or session
fixture of a conftest below the root one: a stack, the real model, the engine's Prefect
harness), with that fixture's parameter (`tests/integration[sqlite]` and
`tests/integration[postgres]` are two groups: each starts one stack). Tests that share
nothing wider than their module are grouped by module. The root conftest's session
fixtures (the local LM, the webhook receiver) are cheap and per process: each stream
starts its own.

`GroupsLongestFirst` hands the groups out longest first (longest-processing-time
scheduling): groups that start processes (marked `integration`) before the others, each
kind by number of tests, so the unit tests' many small modules fill the gaps at the end.
Without xdist (`pytest` without `-n`) none of this applies and the suite runs as one
stream in pytest's order.

How it fails: a test whose costly fixture is module-scoped but shared through a new
package-scoped one lands in the package's group, as it should; a costly session fixture
added to the root conftest would be started once per stream (twice), so add those below it.
"""

from __future__ import annotations

import pytest
from xdist.scheduler import LoadGroupScheduling

XDIST_GROUP = "xdist_group"
STARTS_PROCESSES = "integration"
# Separates a group's name from its kind in the name xdist sees ("kind:name").
KIND_SEPARATOR = ":"
WIDER_FIRST = {"session": 0, "package": 1}


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
        return item.nodeid.split("::")[0]
    _, where, _ = min(shared)
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    values = sorted({str(params[name]) for _, _, name in shared if name in params})
    return f"{where}[{'-'.join(values)}]" if values else where


def mark_groups(items: list[pytest.Item], root: str) -> None:
    """Give every test its xdist group ("kind:group"), read by `--dist loadgroup`; a group's
    kind is `processes` when any of its tests is marked `integration`."""
    groups = {item: shared_group(item, root) for item in items}
    starting = {group for item, group in groups.items() if item.get_closest_marker(STARTS_PROCESSES)}
    for item, group in groups.items():
        kind = "processes" if group in starting else "in-process"
        item.add_marker(pytest.mark.xdist_group(f"{kind}{KIND_SEPARATOR}{group}"))


class GroupsLongestFirst(LoadGroupScheduling):
    """xdist's load-group scheduling, handing out the longest group left first (see the module)."""

    def _assign_work_unit(self, node) -> None:
        longest = min(self.workqueue, key=lambda group: expected_length(group, len(self.workqueue[group])))
        self.workqueue.move_to_end(longest, last=False)
        super()._assign_work_unit(node)


def expected_length(group: str, tests: int) -> tuple[int, int]:
    """Sort key, smallest first: groups that start processes, then by number of tests."""
    return (0 if group.startswith(f"processes{KIND_SEPARATOR}") else 1, -tests)
