"""A schedule's champion run and its result, checked the same way wherever they are read.

A champion pointer (a Prefect Variable) names a job; the job's stored result is another
run's file. Neither is trusted: a run of the same schedule can write the pointer. So the
pointer must name a flow run (a UUID), the run must be a completed run of the same
schedule (its parameters' `schedule_id`), and its result is read with the JSON-only
reader (`dspy_service/result_files.py`). The champion gate (tasks/champion_program.py)
reads them itself; for a sandboxed job, which cannot read another job's result file, the
job-scoped Prefect proxy (deployments/runtime/prefect_proxy.py) reads them on the trusted
side with these same checks, so a job can never be handed another schedule's run.

Failures: `ChampionUnloadable(why)` for a pointer, run (gone, of another schedule, not
completed) or result that is refused or unreadable; the message says which.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from dspy_service.result_files import UnreadableResult, read_json_result

COMPLETED = "COMPLETED"


class ChampionUnloadable(Exception):
    """The champion's program cannot be rebuilt from its stored state; the message says why."""


def champion_run_id(job_id: Any) -> UUID:
    try:
        return UUID(str(job_id))
    except ValueError:
        raise ChampionUnloadable("its job id is not a flow-run id") from None


def check_champion_run(run: Any, schedule_id: str) -> dict[str, Any]:
    """`run` (the Prefect API's JSON of the champion's flow run; None when it is gone) if
    it is a completed run of `schedule_id`."""
    if not isinstance(run, dict):
        raise ChampionUnloadable("its run no longer exists")
    parameters = run.get("parameters")
    owner = parameters.get("schedule_id") if isinstance(parameters, dict) else None
    if not isinstance(owner, str) or owner.lower() != schedule_id.lower():
        raise ChampionUnloadable(f"its run is not a run of schedule {schedule_id}")
    state = run.get("state") if isinstance(run.get("state"), dict) else {}
    if state.get("type") != COMPLETED:
        raise ChampionUnloadable(f"its run is {state.get('name')}, not Completed")
    return run


async def read_champion_result(run: dict[str, Any]) -> dict[str, Any] | None:
    """The checked run's stored result, read as JSON only (None: it stored none)."""
    try:
        return await read_json_result(run)
    except UnreadableResult as exc:
        raise ChampionUnloadable(f"its result is refused: {exc}") from None
