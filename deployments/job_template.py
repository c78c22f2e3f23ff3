"""The work pool's base job template: what the worker runs for every job, fixed.

Prefect's process worker builds each job from the pool's template and the run's
`job_variables` (the deployment's, then the flow run's, merged;
`BaseJobConfiguration.from_template_and_values`): a `{{ name }}` placeholder takes the run's
value of `name`, and an `env` dict in the template is merged with the run's `env`. Whoever
may create a flow run of the deployment could so choose the command, its environment
(`PATH`, `PYTHONPATH`, `LD_PRELOAD`) or its working directory (`python -m` imports from
there first) and run anything as the worker, with the worker's environment, outside the
job runtime's supervisor.

So this template has no placeholder at all:

- `command` is the literal `JOB_COMMAND`;
- `env` is left out: a job runs with the worker's own environment (plus Prefect's
  per-run variables), which the supervisor scrubs before the engine starts;
- `working_dir` is left out: each job runs in a fresh temporary directory;
- `stream_output` is fixed on (the job's output reaches the worker log).

Its variables schema declares no property and `additionalProperties: false`, so the
Prefect UI offers no job variable, and Prefect answers 422 to a run created through
`/deployments/{id}/create_flow_run`, or updated, with any. A run created through
`POST /flow_runs/` is not validated by Prefect: its `job_variables` are stored, and the
worker ignores them, because nothing in the template refers to them.

Nothing here fails; Prefect rejects a template with a placeholder it does not declare (422).
"""

from __future__ import annotations

from typing import Any

# What the worker runs for every job: the job runtime's relay instead of
# `python -m prefect.engine` (deployments/runtime/README.md). `python` is resolved on the
# worker's PATH: `dspy-service worker` and `dspy-service up` put their interpreter first.
JOB_COMMAND = "python -m deployments.runtime.relay"


# What the notify pool's worker runs: the webhook delivery flow (api/webhook_flow.py) is
# trusted code of ours that runs no user code, so Prefect's own engine, without the job
# runtime, fixed the same way.
NOTIFY_COMMAND = "python -m prefect.engine"


def base_job_template(command: str = JOB_COMMAND) -> dict[str, Any]:
    """The `process` pool's base job template (a fresh dict)."""
    return {
        "job_configuration": {"command": command, "stream_output": True},
        "variables": {"type": "object", "properties": {}, "additionalProperties": False},
    }
