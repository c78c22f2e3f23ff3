"""Shared test setup: offline defaults, a private service home, the local LM."""

import os
import tempfile

# Before anything imports dspy, litellm or prefect.
_HOME = tempfile.mkdtemp(prefix="dspy-service-tests-")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DSPY_SERVICE_HOME"] = _HOME
os.environ["PREFECT_HOME"] = os.path.join(_HOME, "prefect")
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = os.path.join(_HOME, "storage", "results")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.support import prefect_schema, streams  # noqa: E402
from tests.support.markers import INTEGRATION  # noqa: E402
from tests.support.stack import reachable_by_jobs, start_job_lm  # noqa: E402
from tests.support.webhook_receiver import WebhookReceiver  # noqa: E402


def pytest_collection_finish(session):
    """Stacks start from a copy of a migrated Prefect database (tests/support/prefect_schema.py):
    when any will start, migrate now, beside the tests that run first."""
    if any(item.get_closest_marker(INTEGRATION) for item in session.items):
        prefect_schema.prepare()


# Two streams (`-n 2 --dist loadscope`, the Makefile's test run): tests that share a stack run
# in one stream (tests/support/streams.py).
@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """Controller: where this worker writes its test groups."""
    groups = Path(_HOME) / "stream-groups"
    groups.mkdir(exist_ok=True)
    node.workerinput[streams.GROUPS_INPUT] = str(groups / f"{node.gateway.id}.json")


@pytest.hookimpl(trylast=True)  # after the deselections
def pytest_collection_modifyitems(config, items):
    """Worker: write the groups of the tests it collected."""
    path = getattr(config, "workerinput", {}).get(streams.GROUPS_INPUT)
    if path:
        root = Path(__file__).parent.relative_to(config.rootpath).as_posix()
        streams.write_groups(Path(path), streams.groups_of(items, root))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") == "loadscope":
        return streams.GroupsLongestFirst(config, log)
    return None


@pytest.fixture(scope="session")
def local_lm():
    """The project's deterministic OpenAI-compatible LM (a test tool, not a real model);
    the jobs of test stacks may reach it (allow-listed)."""
    server = start_job_lm()
    yield server
    server.close()


@pytest.fixture(scope="session")
def webhook_receiver():
    """A webhook receiver (tests/support/webhook_receiver.py) that the service may POST to
    (allow-listed in the stacks configured after it started)."""
    receiver = WebhookReceiver()
    reachable_by_jobs(receiver.url)
    yield receiver
    receiver.close()


@pytest.fixture(autouse=True)
def fresh_dspy_settings():
    """Like DSPy's own tests: no test leaks global DSPy configuration into the next."""
    import dspy

    yield
    dspy.settings.configure(lm=None, adapter=None)
