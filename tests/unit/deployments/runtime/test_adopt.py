"""A pre-imported process adopting a job's environment sets Prefect's logging up again only
when the job's logging inputs differ by meaning (checked in a fresh interpreter: adopting
clears os.environ and reconfigures logging for the whole process)."""

from __future__ import annotations

import os
import subprocess
import sys

ADOPT = """
import logging, os
import prefect  # sets up logging from this environment, as the zygote's imports do
import prefect.logging.configuration as configuration
from deployments.runtime.adopt import adopt_environment, remember_logging_inputs

remember_logging_inputs()
setups = []
original = configuration.setup_logging
configuration.setup_logging = lambda **kw: setups.append(kw) or original(**kw)
base = dict(os.environ)

def adopt(**changes):
    before = len(setups)
    adopt_environment({**base, **changes})
    return len(setups) > before

# The worker renders the stack's batch interval 1 as 1.0: the same setting.
assert not adopt(PREFECT_LOGGING_TO_API_BATCH_INTERVAL="1.0"), "same meaning, no new set-up"
assert adopt(PREFECT_LOGGING_LEVEL="DEBUG"), "another level is set up"
assert logging.getLogger("prefect").level == logging.DEBUG, "and the job's loggers follow it"
assert not adopt(PREFECT_LOGGING_LEVEL="debug"), "the same level again, spelt otherwise"
assert adopt(PREFECT_LOGGING_LEVEL="DEBUG", PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="ERROR"), "an override of the config"
assert adopt(PREFECT_LOGGING_LEVEL="DEBUG", PREFECT_SERVER_LOGGING_LEVEL="DEBUG"), "a level the template names"
print("ok")
"""


def test_logging_is_set_up_again_only_when_its_inputs_differ():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_LOGGING_", "PREFECT_SERVER_LOGGING"))}
    env.update(PREFECT_LOGGING_TO_API_BATCH_INTERVAL="1", PREFECT_LOGGING_LEVEL="INFO", PYTHONPATH=os.getcwd())
    result = subprocess.run([sys.executable, "-c", ADOPT], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
