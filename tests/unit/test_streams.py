"""tests/support/streams.py: which tests run together when the suite runs two streams."""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.support import streams

pytest_plugins = ["pytester"]


@pytest.fixture
def suite(pytester):
    """A small suite shaped like ours: cheap root fixtures, a parametrized package stack, a
    package with its own stack, a module stack and plain modules."""
    pytester.makepyfile(
        **{
            "suite/__init__.py": "",
            "suite/conftest.py": _fixture("session", "local_lm"),
            "suite/integration/__init__.py": "",
            "suite/integration/conftest.py": _fixture("package", "stack", params=["sqlite", "postgres"]),
            "suite/integration/test_contract.py": """
                import pytest
                pytestmark = pytest.mark.integration
                def test_submit(stack, local_lm): pass
                def test_list(stack): pass
            """,
            "suite/integration/test_cli.py": """
                import pytest
                @pytest.fixture(scope="module")
                def cli_stack(): return 1
                @pytest.mark.integration
                def test_cli(cli_stack, local_lm): pass
            """,
            "suite/integration/reliability/__init__.py": "",
            "suite/integration/reliability/conftest.py": _fixture("package", "rstack"),
            "suite/integration/reliability/test_crashes.py": "def test_kill(rstack): pass",
            "suite/integration/reliability/test_limits.py": "def test_memory(rstack, local_lm): pass",
            "suite/unit/__init__.py": "",
            "suite/unit/test_a.py": "def test_one(local_lm): pass\ndef test_two(): pass",
        }
    )
    items, _ = pytester.inline_genitems("-p", "no:cacheprovider")
    return streams.groups_of(items, root="suite")


def _fixture(scope: str, name: str, params: list[str] | None = None) -> str:
    arguments = f"scope={scope!r}" + (f", params={params!r}" if params else "")
    return textwrap.dedent(
        f"""
        import pytest
        @pytest.fixture({arguments})
        def {name}(request):
            return getattr(request, "param", None)
        """
    )


def test_tests_of_one_stack_share_a_group_and_each_database_is_its_own(suite):
    assert suite["suite/integration/test_contract.py::test_submit[sqlite]"] == "processes:suite/integration[sqlite]"
    assert suite["suite/integration/test_contract.py::test_list[sqlite]"] == "processes:suite/integration[sqlite]"
    assert suite["suite/integration/test_contract.py::test_list[postgres]"] == "processes:suite/integration[postgres]"


def test_a_package_stack_groups_its_modules_and_root_fixtures_do_not_group(suite):
    crashes = suite["suite/integration/reliability/test_crashes.py::test_kill"]
    assert crashes == suite["suite/integration/reliability/test_limits.py::test_memory"]
    assert crashes == "in-process:suite/integration/reliability"  # none of them is marked integration


def test_module_fixtures_and_plain_tests_group_by_module(suite):
    assert suite["suite/integration/test_cli.py::test_cli"] == "processes:suite/integration/test_cli.py"
    assert suite["suite/unit/test_a.py::test_one"] == suite["suite/unit/test_a.py::test_two"]
    assert suite["suite/unit/test_a.py::test_one"] == "in-process:suite/unit/test_a.py"


class RecordingNode:
    """Stands for an xdist worker: records the tests it is sent (by index)."""

    shutting_down = False

    def __init__(self):
        self.sent: list[list[int]] = []

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sent.append(indices)


def test_the_longest_group_left_goes_first(pytester):
    groups = {
        "in-process:tests/unit/test_big.py": 100,
        "processes:tests/real_lm": 5,
        "processes:tests/integration[sqlite]": 90,
    }
    collection = [f"{group.split(':')[1]}::test_{n}" for group, count in groups.items() for n in range(count)]
    group_of = {nodeid: group for group in groups for nodeid in collection if nodeid.startswith(group.split(":")[1])}
    scheduler = streams.GroupsLongestFirst(pytester.parseconfig("-p", "xdist", "--tx", "popen"))
    scheduler.groups = group_of
    node = RecordingNode()
    scheduler.registered_collections[node] = collection
    for nodeid in collection:
        scheduler.workqueue.setdefault(scheduler._split_scope(nodeid), {})[nodeid] = False

    for _ in groups:
        scheduler._assign_work_unit(node)

    first_of_each = [group_of[collection[indices[0]]] for indices in node.sent]
    assert first_of_each == [
        "processes:tests/integration[sqlite]",
        "processes:tests/real_lm",
        "in-process:tests/unit/test_big.py",
    ]
    assert [len(indices) for indices in node.sent] == [90, 5, 100]


def test_groups_travel_whole_through_their_file(tmp_path):
    path = tmp_path / "gw0.json"
    streams.write_groups(path, {"tests/a.py::test_x": "in-process:tests/a.py"})
    assert json.loads(path.read_text()) == {"tests/a.py::test_x": "in-process:tests/a.py"}
    assert [p.name for p in tmp_path.iterdir()] == ["gw0.json"]
