"""Engine tests run the flow with Prefect's local orchestration on a temporary database."""

import pytest
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(scope="package", autouse=True)
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield
