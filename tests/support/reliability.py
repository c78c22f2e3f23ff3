"""The stacks that kill, restart and abuse their processes (the reliability and warm-start
suites): their lowered limits, the canary key in the worker's environment, and the
hostile job code both suites run.
"""

from __future__ import annotations

from dspy_service.testing.local_lm import ARITHMETIC_SIGNATURE_CODE
from tests.support.payloads import SECRET_KEY

CANARY_KEY = "sk-canary-worker-secret-5f4e3d"
JOB_SLOTS = 4

# Limits lowered so hostile jobs hit them quickly; provider keys jobs must never see.
STACK_ENV = {
    "OPENAI_API_KEY": CANARY_KEY,  # a provider key in the worker's environment
    "AWS_SECRET_ACCESS_KEY": CANARY_KEY,
    "DSPY_SERVICE_JOB_MEMORY_MB": "2048",
    "DSPY_SERVICE_JOB_OUTPUT_LIMIT_MB": "1",
    "DSPY_SERVICE_JOB_PRINT_LIMIT_MB": "0.25",
    "DSPY_SERVICE_JOB_MAX_TASKS": "256",
    "DSPY_SERVICE_ZOMBIE_AFTER_SECONDS": "45",
    # Pending -> Running of a sandboxed job includes its supervisor's preparation and the
    # engine's imports in a new interpreter: on a loaded 2-core host that took over 40 s.
    "DSPY_SERVICE_STUCK_PENDING_SECONDS": "60",
    "DSPY_SERVICE_STUCK_JOB_SWEEP_SECONDS": "5",
    "DSPY_SERVICE_MAX_REQUEST_MB": "2",
    "DSPY_SERVICE_MAX_DATASET_ROWS": "5000",
    "DSPY_SERVICE_JOB_TIMEOUT_SECONDS": "3600",
    "DSPY_SERVICE_LM_NUM_RETRIES": "4",
}

SIG = ARITHMETIC_SIGNATURE_CODE

# Fails the job with its environment in the message: "ENV <names> VALUES <values>".
ENV_DUMP = (
    "import os\n"
    "raise RuntimeError('ENV ' + ' '.join(sorted(os.environ)) + ' VALUES ' + ' '.join(os.environ.values()))\n"
)

# Bombs: signature-code prefixes that exhaust the job's process and memory limits.
FORK_BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
MEMORY_BOMB = "chunks = []\nwhile True:\n    chunks.append(b'x' * 50_000_000)\n"

# A user subprocess started by the job: it must die with the job.
SPAWNS_CHILD = "import subprocess\n_child = subprocess.Popen(['sleep', '300'])\n" + SIG


def environment_names(message: str) -> list[str]:
    """The variable names an ENV_DUMP job's failure message lists."""
    return message.split("RuntimeError: ENV ", 1)[1].split(" VALUES ")[0].split()


def assert_environment_scrubbed(message: str) -> None:
    """An ENV_DUMP job saw no provider key of the worker's, but what the engine needs."""
    names = environment_names(message)
    assert CANARY_KEY not in message
    assert "OPENAI_API_KEY" not in names and "AWS_SECRET_ACCESS_KEY" not in names
    assert "PREFECT_API_URL" in names and "PATH" in names  # what the engine needs stays
    # The job's own key travels in its model config, never in the environment.
    assert SECRET_KEY not in message
