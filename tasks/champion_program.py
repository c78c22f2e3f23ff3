"""The champion's program for the champion gate, rebuilt from JSON: no pickle, ever.

A champion pointer (a Prefect Variable) names a job; the job's stored result is another
run's file. Neither is trusted (dspy_service/champion_runs.py checks both): the pointer
must name a completed run of the same schedule, its result is read with the JSON-only
reader, and only its `program_artifact.program_state` (the JSON state of
`program.save(path.json)`) is used. That state is loaded into a module built the way this
job built its own student: from this job's `signature_code`, `module_name` and
`module_kwargs` (`tasks/compile.build_student`). The state must fit that module: the same
predictors, each with the entries `dump_state` writes and nothing else (a `config` entry
would become LM call arguments), fields matching this signature's; LMs saved in it are
dropped, so the champion is scored with this job's LM only.

Where the run and result come from: a job reads the champion's run from the Prefect API
and its result file itself; a sandboxed job (`DSPY_SERVICE_SANDBOXED`, where only its own
result directory is mounted) asks the job-scoped Prefect proxy's champion-result route,
which reads both on the trusted side with the same checks, and checks the run again.

Failures: `ChampionUnloadable(why)` for a pointer, run (gone, of another schedule, not
completed), result or state that is refused or does not fit (the message says which; the
gate lets this run replace the champion); Prefect's other errors (server unreachable)
propagate to the gate, which does the same.
"""

from __future__ import annotations

import json
import os
from typing import Any

import dspy
import httpx
from prefect.utilities.asyncutils import run_coro_as_sync

from dspy_service.champion_runs import ChampionUnloadable, champion_run_id, check_champion_run, read_champion_result
from dspy_service.contract import CHAMPION_RESULT_ROUTE, engine_is_sandboxed
from dspy_service.prefect_http import sync_prefect_client
from dspy_service.schemas import JobSpec
from tasks.artifact import strip_language_models
from tasks.compile import build_student
from tasks.user_code import UserCode

SIGNATURE_CHANGED = "the schedule's module or signature changed since"
__all__ = ["ChampionUnloadable", "load_champion_program"]


def read_champion_run(schedule_id: str, job_id: str) -> dict[str, Any]:
    """The champion's flow run as the Prefect API's JSON, if it is a completed run of
    this schedule. Read raw: parsing it into Prefect's `FlowRun` would import the pickle
    library a state's serializer names."""
    run_id = champion_run_id(job_id)
    with sync_prefect_client() as client:
        try:
            response = client.request("GET", "/flow_runs/{id}", path_params={"id": run_id})
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 404:
                return check_champion_run(None, schedule_id)
            raise
    return check_champion_run(json.loads(response.content), schedule_id)


def champion_from_proxy(schedule_id: str, job_id: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(run, result) of the champion as the job-scoped Prefect proxy read them on the
    trusted side (a sandboxed job cannot read another job's result file)."""
    champion_run_id(job_id)
    with sync_prefect_client() as client:
        try:
            response = client.request("GET", CHAMPION_RESULT_ROUTE)  # type: ignore[arg-type]
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 404:
                raise ChampionUnloadable("the schedule has no champion any more") from None
            if exc.response.status_code == 422:
                raise ChampionUnloadable(str(exc.response.json().get("detail"))) from None
            raise
    answer = json.loads(response.content)
    if str(answer.get("job_id")).lower() != job_id.lower():
        raise ChampionUnloadable(f"the champion changed to {answer.get('job_id')} while it was read")
    result = answer.get("result")
    return check_champion_run(answer.get("run"), schedule_id), result if isinstance(result, dict) else None


def stored_program(result: dict[str, Any] | None) -> tuple[dict[str, Any], list[Any]]:
    """(program_state, optimized_prompts) of a run's stored result."""
    artifact = (result or {}).get("program_artifact")
    state = artifact.get("program_state") if isinstance(artifact, dict) else None
    if not isinstance(state, dict) or not state:
        raise ChampionUnloadable("its result has no program state")
    prompts = artifact.get("optimized_prompts")
    return state, prompts if isinstance(prompts, list) else []


def _field_names(fields: Any) -> list[str]:
    return [str(name) for name in fields] if isinstance(fields, (list, dict)) else []


def check_fields(name: str, predictor: dspy.Predict, saved: dict[str, Any], described: dict[str, Any] | None) -> None:
    """The saved predictor was built for this signature's fields (the state itself holds
    only their prefixes and descriptions, applied in order: the names come from the
    artifact's description of the same predictor)."""
    signature = predictor.signature
    now = (list(signature.input_fields), list(signature.output_fields))
    saved_signature = saved.get("signature")
    saved_fields = saved_signature.get("fields") if isinstance(saved_signature, dict) else None
    if not isinstance(saved_fields, list) or len(saved_fields) != len(signature.fields):
        count = len(saved_fields) if isinstance(saved_fields, list) else 0
        raise ChampionUnloadable(
            f"its predictor {name!r} has {count} fields, this run's signature {len(signature.fields)}; "
            f"{SIGNATURE_CHANGED}"
        )
    before = (
        (_field_names(described.get("input_fields")), _field_names(described.get("output_fields")))
        if described
        else None
    )
    if before != now:
        shown = f"{', '.join(before[0])} -> {', '.join(before[1])}" if before else "unknown fields"
        raise ChampionUnloadable(
            f"its predictor {name!r} was built for {shown}, this run's signature has "
            f"{', '.join(now[0])} -> {', '.join(now[1])}; {SIGNATURE_CHANGED}"
        )


def fitted_parameter(name: str, parameter: Any, saved: Any, described: dict[str, Any] | None) -> dict[str, Any]:
    """One predictor's saved state checked against `parameter`, with no LM in it."""
    if not isinstance(saved, dict):
        raise ChampionUnloadable(f"its program has no predictor {name!r}; {SIGNATURE_CHANGED}")
    unexpected = set(saved) - set(parameter.dump_state()) - {"fields"}
    if unexpected:
        raise ChampionUnloadable(f"its predictor {name!r} has unexpected state entries {sorted(unexpected)}")
    if isinstance(parameter, dspy.Predict):
        check_fields(name, parameter, saved, described)
    return {**saved, "lm": None}


def fitted_state(program: dspy.Module, state: dict[str, Any], prompts: list[Any]) -> dict[str, Any]:
    """The champion's state checked against `program`: a bare predictor's state is its
    own; a module's maps each predictor's name to its state."""
    described = {p.get("predictor_name"): p for p in prompts if isinstance(p, dict)}
    if isinstance(program, dspy.Predict):
        if "signature" not in state:
            raise ChampionUnloadable(f"its program is not a single predictor; {SIGNATURE_CHANGED}")
        return fitted_parameter("self", program, state, described.get("self"))
    fitted = {
        name: fitted_parameter(name, parameter, state.get(name), described.get(name))
        for name, parameter in program.named_parameters()
    }
    extra = sorted(set(state) - set(fitted))
    if extra:
        raise ChampionUnloadable(
            f"its program has predictors this module has not ({', '.join(extra)}); {SIGNATURE_CHANGED}"
        )
    return fitted


def load_champion_program(schedule_id: str, job_id: str, spec: JobSpec, user_code: UserCode) -> dspy.Module:
    """The champion's optimized program, rebuilt from this job's code and its JSON state."""
    if engine_is_sandboxed(os.environ):
        _, result = champion_from_proxy(schedule_id, job_id)
    else:
        result = run_coro_as_sync(read_champion_result(read_champion_run(schedule_id, job_id)))
    state, prompts = stored_program(result)
    program = build_student(spec, user_code)
    try:
        program.load_state(fitted_state(program, state, prompts))
    except ChampionUnloadable:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed state: values of the wrong shape
        raise ChampionUnloadable(f"its program state does not load ({type(exc).__name__}: {exc})") from None
    strip_language_models(program)
    return program
